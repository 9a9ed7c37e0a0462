/* Arm semihosting (BKPT 0xAB on M-profile): console, files and exit status through QEMU. */
#ifndef ONNX2CMSIS_SEMIHOST_H
#define ONNX2CMSIS_SEMIHOST_H
#include <stddef.h>
#include <stdint.h>

enum {
    SH_OPEN = 0x01, SH_CLOSE = 0x02, SH_WRITE0 = 0x04, SH_WRITE = 0x05, SH_READ = 0x06,
    SH_FLEN = 0x0C, SH_GET_CMDLINE = 0x15, SH_EXIT = 0x18, SH_EXIT_EXTENDED = 0x20
};
#define SH_APPLICATION_EXIT 0x20026u

static inline int sh_call(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static inline void sh_puts(const char *s) { sh_call(SH_WRITE0, s); }

static inline void sh_puthex(uint32_t v)
{
    char b[11] = "0x";
    int i;
    for (i = 0; i < 8; i++) {
        b[2 + i] = "0123456789abcdef"[(v >> (28 - 4 * i)) & 0xFu];
    }
    b[10] = 0;
    sh_puts(b);
}

/* mode 1 = "rb", 5 = "wb" (the ISO fopen modes in semihosting order) */
static inline int sh_open(const char *path, int mode)
{
    uint32_t a[3];
    size_t n = 0;
    while (path[n]) {
        n++;
    }
    a[0] = (uint32_t)(uintptr_t)path; a[1] = (uint32_t)mode; a[2] = (uint32_t)n;
    return sh_call(SH_OPEN, a);
}

/* Both return the number of bytes NOT transferred: 0 means all of them. */
static inline int sh_read(int fd, void *buf, size_t len)
{
    uint32_t a[3];
    a[0] = (uint32_t)fd; a[1] = (uint32_t)(uintptr_t)buf; a[2] = (uint32_t)len;
    return sh_call(SH_READ, a);
}

static inline int sh_write(int fd, const void *buf, size_t len)
{
    uint32_t a[3];
    a[0] = (uint32_t)fd; a[1] = (uint32_t)(uintptr_t)buf; a[2] = (uint32_t)len;
    return sh_call(SH_WRITE, a);
}

static inline int sh_close(int fd)
{
    uint32_t a[1];
    a[0] = (uint32_t)fd;
    return sh_call(SH_CLOSE, a);
}

/* QEMU exits with `code` as its own exit status (SYS_EXIT_EXTENDED). */
__attribute__((noreturn)) static inline void sh_exit(int code)
{
    uint32_t a[2];
    a[0] = SH_APPLICATION_EXIT; a[1] = (uint32_t)code;
    sh_call(SH_EXIT_EXTENDED, a);
    sh_call(SH_EXIT, (const void *)(uintptr_t)(code == 0 ? SH_APPLICATION_EXIT : 0x20023u));
    for (;;) {
    }
}
#endif
