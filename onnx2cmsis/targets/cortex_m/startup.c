/* Bare-metal start-up for the QEMU test machines: vector table, FPU/MVE enable, .data/.bss set-up,
 * and a fault handler that turns a crash into exit status 127 instead of a hang. */
#include <stdint.h>

#include "semihost.h"

extern uint32_t __StackTop;
extern uint32_t __data_load__, __data_start__, __data_end__;
extern uint32_t __bss_start__, __bss_end__;
extern int main(void);

void Reset_Handler(void);
void Fault_Handler(void);

static void Default_Handler(void)
{
    sh_puts("unexpected interrupt\n");
    sh_exit(126);
}

__attribute__((section(".isr_vector"), used)) void (*const vector_table[48])(void) = {
    (void (*)(void))&__StackTop, Reset_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, /* NMI..SecureFault */
    0, 0, 0,
    Default_Handler, Default_Handler, 0, Default_Handler, Default_Handler, /* SVC, DebugMon, -, PendSV, SysTick */
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler,
};

/* Runs only after the FPU/MVE is on: the compiler may use FP or vector registers here. Loop
 * distribution is off so these loops do not become memcpy/memset calls. */
__attribute__((noreturn, noinline, used, optimize("no-tree-loop-distribute-patterns"))) void start_c(void)
{
    uint32_t *src = &__data_load__;
    uint32_t *dst = &__data_start__;
    while (dst < &__data_end__) {
        *dst++ = *src++;
    }
    for (dst = &__bss_start__; dst < &__bss_end__;) {
        *dst++ = 0;
    }
    sh_exit(main());
}

/* Naked: no compiler-generated (possibly FP/MVE) code may run before CPACR grants access. */
__attribute__((naked, noreturn)) void Reset_Handler(void)
{
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
    __asm volatile(
        "ldr r0, =0xE000ED88 \n" /* SCB->CPACR */
        "ldr r1, [r0]        \n"
        "ldr r2, =0x00F00000 \n" /* CP10 and CP11: full access (FPU and MVE) */
        "orr r1, r1, r2      \n"
        "str r1, [r0]        \n"
        "dsb                 \n"
        "isb                 \n");
#endif
    __asm volatile("ldr r0, =start_c \n bx r0"); /* ldr + bx reaches anywhere, also on Armv6-M */
}

void Fault_Handler(void)
{
    uint32_t ipsr;
    __asm volatile("mrs %0, ipsr" : "=r"(ipsr));
    sh_puts("FAULT: exception ");
    sh_puthex(ipsr);
    sh_puts("\n");
    sh_exit(127);
}
