/* QEMU TCG plugin: the exact number of guest instructions executed between two marker addresses.
 *     qemu-system-arm ... -plugin libinsncount.so,start=0x...,stop=0x...,out=counts.txt
 * Every instruction adds 1 to a counter inline (exact even when a translation block is left early).
 * When the instruction at `start` runs the counter is noted; when the one at `stop` runs, the
 * difference is written as one line. The runner puts the markers around each NAME_invoke call. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_api.h"

PLUGIN_EXPORT int qemu_plugin_version = 1;

static uint64_t executed;
static uint64_t start_pc = UINT64_MAX;
static uint64_t stop_pc = UINT64_MAX;
static uint64_t at_start;
static int open_region;
static FILE *out;

static void region_start(unsigned int vcpu, void *userdata)
{
    (void)vcpu;
    (void)userdata;
    at_start = executed;
    open_region = 1;
}

static void region_stop(unsigned int vcpu, void *userdata)
{
    (void)vcpu;
    (void)userdata;
    if (open_region && out) {
        fprintf(out, "%" PRIu64 "\n", executed - at_start);
    }
    open_region = 0;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t i, n = qemu_plugin_tb_n_insns(tb);
    (void)id;
    for (i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn);
        /* callbacks run before the inline add: neither marker instruction counts itself */
        if (pc == start_pc) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, region_start, QEMU_PLUGIN_CB_NO_REGS, NULL);
        }
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &executed, 1);
        if (pc == stop_pc) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, region_stop, QEMU_PLUGIN_CB_NO_REGS, NULL);
        }
    }
}

static void at_plugin_exit(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    if (out) {
        fclose(out);
        out = NULL;
    }
}

PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    int i;
    (void)info;
    for (i = 0; i < argc; i++) {
        if (strncmp(argv[i], "start=", 6) == 0) {
            start_pc = strtoull(argv[i] + 6, NULL, 0) & ~1ULL; /* drop the Thumb bit */
        } else if (strncmp(argv[i], "stop=", 5) == 0) {
            stop_pc = strtoull(argv[i] + 5, NULL, 0) & ~1ULL;
        } else if (strncmp(argv[i], "out=", 4) == 0) {
            out = fopen(argv[i] + 4, "w");
        } else {
            fprintf(stderr, "insncount: unknown argument %s\n", argv[i]);
            return -1;
        }
    }
    if (!out) {
        fprintf(stderr, "insncount: out=FILE is required\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, at_plugin_exit, NULL);
    return 0;
}
