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
 * A program that installs its own SIGSEGV handler later (Python's faulthandler, pytest, gcc, torch)
 * does not replace this one: sigaction() and signal() for SIGSEGV are intercepted, the program's
 * handler is kept and called for every SIGSEGV that is not a CPUID (a real crash still reaches it).
 * Code that installs handlers by raw syscall is not covered.
 *
 * Build: cc -O2 -shared -fPIC -o cpuid_mask.so cpuid_mask.c -ldl
 * Use:   LD_PRELOAD=$PWD/cpuid_mask.so python ...   (stderr says so once unless CPUID_MASK_QUIET is set;
 *        exit 3 when faulting is refused)
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
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

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
static sigaction_fn real_sigaction;
static struct sigaction program_segv;     /* what the program asked for (SIG_DFL until it asks) */
static volatile int installed;

static sigaction_fn get_real_sigaction(void) {
    if (!real_sigaction)
        real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    return real_sigaction;
}

static void pass_on(int sig, siginfo_t *info, void *ctx) {
    /* not a CPUID: what the program's own handler (or the default) would have done */
    if (program_segv.sa_flags & SA_SIGINFO) {
        if (program_segv.sa_sigaction) { program_segv.sa_sigaction(sig, info, ctx); return; }
    } else if (program_segv.sa_handler != SIG_DFL && program_segv.sa_handler != SIG_IGN) {
        program_segv.sa_handler(sig);
        return;
    }
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    get_real_sigaction()(SIGSEGV, &dfl, NULL);
    if (info->si_code <= 0)     /* sent (raise, kill): deliver it again, now to the default action */
        raise(sig);
    /* a fault: returning re-runs the faulting instruction, which now meets the default action */
}

static void on_segv(int sig, siginfo_t *info, void *vctx) {
    ucontext_t *uc = (ucontext_t *)vctx;
    greg_t *r = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)r[REG_RIP];
    if (info->si_code != SI_KERNEL || ip[0] != 0x0f || ip[1] != 0xa2) {
        pass_on(sig, info, vctx);
        return;
    }
    uint32_t leaf = (uint32_t)r[REG_RAX], sub = (uint32_t)r[REG_RCX], a, b, c, d;
    set_faulting(0);
    __cpuid_count(leaf, sub, a, b, c, d);
    set_faulting(1);
    mask(leaf, sub, &a, &b, &c, &d);
    r[REG_RAX] = a; r[REG_RBX] = b; r[REG_RCX] = c; r[REG_RDX] = d;
    r[REG_RIP] += 2;
}

/* The program's SIGSEGV handler is recorded, not installed: on_segv stays first and passes other faults on. */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (sig == SIGSEGV && installed) {
        if (old) *old = program_segv;
        if (act) program_segv = *act;
        return 0;
    }
    return get_real_sigaction()(sig, act, old);
}

sighandler_t signal(int sig, sighandler_t handler) {
    struct sigaction act, old;
    memset(&act, 0, sizeof act);
    act.sa_handler = handler;
    act.sa_flags = SA_RESTART;
    sigemptyset(&act.sa_mask);
    if (sigaction(sig, &act, &old) != 0)
        return SIG_ERR;
    return old.sa_handler;
}

__attribute__((constructor)) static void install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    memset(&program_segv, 0, sizeof program_segv);
    program_segv.sa_handler = SIG_DFL;
    get_real_sigaction()(SIGSEGV, &sa, NULL);
    installed = 1;
    if (set_faulting(1) != 0) {
        fprintf(stderr, "cpuid_mask: this kernel/CPU refuses CPUID faulting (no cpuid_fault flag): not masked\n");
        _exit(3);
    }
    if (!getenv("CPUID_MASK_QUIET"))
        fprintf(stderr, "cpuid_mask: AVX-512, VNNI and AMX hidden from this process\n");
}
