/* Runs generated models on a QEMU Cortex-M machine. The host writes a job file of records
 *     u32 model index, u32 sample count, then count * input_size bytes (little-endian elements)
 * and gets back every output, concatenated, in the result file, and per inference the stack bytes it
 * used (u32) in stack.bin. Exit status: 0, or where it failed (2x: files; 3x: a bad record;
 * >= 100: 100 + the CMSIS-NN status a model returned, negated). */
#include <stdint.h>

#include "models_table.h"
#include "semihost.h"

#ifndef RUNNER_BUFFER_BYTES
#define RUNNER_BUFFER_BYTES 4096
#endif

/* Stack use is measured, not estimated from call graphs: the free stack below main's frame is
 * painted before each inference, and the deepest word overwritten afterwards is the high-water mark. */
#define STACK_PAINT 0xC5A5C5A5u
#define STACK_MARGIN_WORDS 16u /* left unpainted just below sp: the painting loop's own spills */
extern uint32_t __StackLimit;

/* int32_t: aligned for models whose elements are int16_t */
static int32_t input[(RUNNER_BUFFER_BYTES + 3) / 4];
static int32_t output[(RUNNER_BUFFER_BYTES + 3) / 4];

/* Empty markers around each inference: the instruction-count plugin measures from the first
 * instruction of region_start to the first of region_stop. */
__attribute__((noinline)) void region_start(void)
{
    __asm volatile("" ::: "memory");
}

__attribute__((noinline)) void region_stop(void)
{
    __asm volatile("" ::: "memory");
}

static int read_u32(int fd, uint32_t *v)
{
    return sh_read(fd, v, sizeof *v) == 0;
}

int main(void)
{
    int in_fd = sh_open("job.bin", 1);
    int out_fd = sh_open("result.bin", 5);
    int stack_fd = sh_open("stack.bin", 5);
    uint32_t index, count, i;
    if (in_fd < 0 || out_fd < 0 || stack_fd < 0) {
        sh_puts("runner: cannot open job.bin / result.bin / stack.bin\n");
        return 20;
    }
    while (read_u32(in_fd, &index)) {
        const runner_model *m;
        if (!read_u32(in_fd, &count) || index >= RUNNER_MODEL_COUNT) {
            return 30;
        }
        m = &runner_models[index];
        if (m->input_size > RUNNER_BUFFER_BYTES || m->output_size > RUNNER_BUFFER_BYTES) {
            return 31;
        }
        for (i = 0; i < count; i++) {
            int status;
            uint32_t *sp;
            volatile uint32_t *p;
            uint32_t used;
            if (sh_read(in_fd, input, m->input_size) != 0) {
                return 32;
            }
            __asm volatile("mov %0, sp" : "=r"(sp));
            for (p = &__StackLimit; p < sp - STACK_MARGIN_WORDS; p++) {
                *p = STACK_PAINT;
            }
            region_start();
            status = m->invoke(input, output);
            region_stop();
            for (p = &__StackLimit; p < sp - STACK_MARGIN_WORDS && *p == STACK_PAINT; p++) {
            }
            used = (uint32_t)((uintptr_t)sp - (uintptr_t)p);
            if (status != 0) {
                return 100 + (status < 0 ? -status : status);
            }
            if (sh_write(out_fd, output, m->output_size) != 0 || sh_write(stack_fd, &used, sizeof used) != 0) {
                return 21;
            }
        }
    }
    sh_close(in_fd);
    sh_close(out_fd);
    sh_close(stack_fd);
    return 0;
}
