//! Flush-to-zero for subnormal floats on the calling thread.
//!
//! Training drives some weights into the subnormal range (|w| < 1.18e-38):
//! a unit that no input activates receives only its weight decay, and the
//! weights shrink geometrically towards zero. A trained LeNet-5 (Caffe's, 20
//! dense epochs of Adam with 5e-5 L2) had 25% of its fc1 weights subnormal.
//! x86 cores handle a subnormal operand of an FMA through a microcode assist
//! costing on the order of a hundred cycles, so every GEMM over such a weight
//! ran several times slower. Training that LeNet-5 further from that
//! checkpoint ran at half the speed of training it from scratch: 63 s per
//! epoch against 30.
//!
//! [`flush_denormals`] sets FTZ (results that would be subnormal become 0)
//! and DAZ (subnormal inputs read as 0) in the thread's MXCSR. That is the
//! setting TensorFlow uses in its CPU thread pools. Threads created
//! afterwards inherit it: POSIX threads start with their creator's
//! floating-point environment. So the binary calls it first thing in `main`,
//! before candle's and rayon's pools exist.
//!
//! Only values below 1.18e-38 in magnitude change, and they become zero. On
//! architectures other than x86-64 the function does nothing.

/// Sets flush-to-zero and denormals-are-zero for f32/f64 SSE/AVX arithmetic
/// on the calling thread (and on the threads it creates afterwards); returns
/// whether it could.
pub fn flush_denormals() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        const FTZ: u32 = 1 << 15;
        const DAZ: u32 = 1 << 6;
        let mut csr: u32 = 0;
        // SAFETY: `stmxcsr`/`ldmxcsr` read and write the thread's SSE control
        // register through a valid u32 on the stack; only the FTZ and DAZ bits
        // change (no exception is unmasked).
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
            csr |= FTZ | DAZ;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly));
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn subnormals_flush_to_zero_on_this_thread_and_the_threads_it_creates() {
        // On a thread of its own, so the test harness's threads keep their mode.
        std::thread::spawn(|| {
            let tiny = std::hint::black_box(1e-39f32);
            assert!(tiny.is_subnormal());
            assert!(std::hint::black_box(tiny * 1.0) != 0.0, "subnormals are kept by default");
            assert!(flush_denormals());
            assert_eq!(std::hint::black_box(tiny) * std::hint::black_box(1.0f32), 0.0, "DAZ: read as zero");
            let small = std::hint::black_box(1e-30f32);
            assert_eq!(small * std::hint::black_box(1e-10f32), 0.0, "FTZ: a subnormal result is zero");
            assert!(std::hint::black_box(1e-30f32) * std::hint::black_box(1e3f32) > 0.0, "normal values unchanged");
            let child = std::thread::spawn(|| std::hint::black_box(1e-39f32) * std::hint::black_box(1.0f32));
            assert_eq!(child.join().unwrap(), 0.0, "a thread created afterwards inherits the mode");
        })
        .join()
        .unwrap();
    }
}
