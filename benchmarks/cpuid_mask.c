/* LD_PRELOAD shim: this process sees an x86-64 CPU without AVX-512, VNNI (AVX512-VNNI and AVX-VNNI)
 * and AMX, as an AVX2-only CPU reports itself, so that onnxruntime (MLAS), OpenVINO (oneDNN), numpy and
 * OpenCV dispatch the kernels they would run on such a CPU. The instructions then run natively at full
 * speed; only the kernel choice changes, not the core's microarchitecture.
 *
 * How: Linux CPUID faulting (arch_prctl ARCH_SET_CPUID, CPU flag cpuid_fault: Intel since Ivy Bridge,
 * also in VMs that pass it on) turns every CPUID instruction of this process into a SIGSEGV; the
 * handler runs the real CPUID with faulting briefly off, clears the feature bits below, writes the
 * registers back and steps over the instruction. Inherited by threads and fork(), reset by execve().
 * glibc's own dispatch (memcpy) ran before this constructor and keeps the real features.
 *
 * Build: cc -O2 -shared -fPIC -o cpuid_mask.so cpuid_mask.c
 * Use:   LD_PRELOAD=$PWD/cpuid_mask.so python ...   (stderr says so once; exit 3 when faulting is refused)
 * Not with a SIGSEGV handler installed later in the process (Python's faulthandler: leave
 * PYTHONFAULTHANDLER unset, and no pytest in-process).
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static int set_faulting(int on) { return (int)syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1); }

static void mask(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d) {
    if (leaf == 7 && sub == 0) {
        /* EBX: avx512f 16, avx512dq 17, avx512ifma 21, avx512pf 26, avx512er 27, avx512cd 28,
         *      avx512bw 30, avx512vl 31 */
        *b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
        /* ECX: avx512vbmi 1, avx512vbmi2 6, avx512vnni 11, avx512bitalg 12, avx512vpopcntdq 14 */
        *c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        /* EDX: avx512_4vnniw 2, avx512_4fmaps 3, avx512_vp2intersect 8, amx_bf16 22, avx512_fp16 23,
         *      amx_tile 24, amx_int8 25 */
        *d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
    } else if (leaf == 7 && sub == 1) {
        /* EAX: avx_vnni 4, avx512_bf16 5, amx_fp16 21, avx_ifma 23; EDX: avx_vnni_int8 4, avx_ne_convert 5,
         *      amx_complex 8, avx_vnni_int16 10, avx10 19 */
        *a &= ~((1u << 4) | (1u << 5) | (1u << 21) | (1u << 23));
        *d &= ~((1u << 4) | (1u << 5) | (1u << 8) | (1u << 10) | (1u << 19));
    } else if (leaf == 0xd && sub == 0) {
        /* XCR0 components the OS supports: opmask 5, ZMM_Hi256 6, Hi16_ZMM 7, XTILECFG 17, XTILEDATA 18 */
        *a &= ~((1u << 5) | (1u << 6) | (1u << 7) | (1u << 17) | (1u << 18));
    } else if (leaf == 0x24) {
        *a = *b = *c = *d = 0;     /* AVX10 leaf */
    }
    (void)c;
}

static void on_segv(int sig, siginfo_t *info, void *vctx) {
    ucontext_t *uc = (ucontext_t *)vctx;
    greg_t *r = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)r[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) {            /* not CPUID: a real crash */
        signal(SIGSEGV, SIG_DFL);
        raise(SIGSEGV);
        return;
    }
    uint32_t leaf = (uint32_t)r[REG_RAX], sub = (uint32_t)r[REG_RCX], a, b, c, d;
    set_faulting(0);
    __cpuid_count(leaf, sub, a, b, c, d);
    set_faulting(1);
    mask(leaf, sub, &a, &b, &c, &d);
    r[REG_RAX] = a; r[REG_RBX] = b; r[REG_RCX] = c; r[REG_RDX] = d;
    r[REG_RIP] += 2;
    (void)sig; (void)info;
}

__attribute__((constructor)) static void install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    if (set_faulting(1) != 0) {
        fprintf(stderr, "cpuid_mask: this kernel/CPU refuses CPUID faulting (no cpuid_fault flag): not masked\n");
        _exit(3);
    }
    if (!getenv("CPUID_MASK_QUIET"))
        fprintf(stderr, "cpuid_mask: AVX-512, VNNI and AMX hidden from this process\n");
}
