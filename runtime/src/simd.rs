//! Loops compiled for the widest vector extension the CPU has. The crate is built for the
//! baseline ISA (SSE2 on x86-64), so auto-vectorized loops get 4 f32 lanes; a function
//! declared through [`widest_fn!`] is also compiled for AVX-512 and AVX2 (its body and every
//! `#[inline(always)]` helper it calls inlined into each copy) and picks one at run time,
//! getting 16 or 8 lanes. FMA is not enabled, so no multiply-add is contracted: every copy
//! computes bit-identical results, only faster.

/// Whether the CPU runs the AVX-512 copies.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vl")
}

/// Whether the CPU runs the AVX2 copies.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Declares a function compiled three times on x86-64: AVX-512, AVX2 and the baseline,
/// dispatched at run time by feature detection. Type parameters are names with at most one
/// trait bound (`<T>`, `<T: Element>`);
/// closures passed as `impl Fn…` arguments are inlined into each copy with the body.
macro_rules! widest_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident $(<$($gen:ident $(: $bound:ident)?),*>)? ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name $(<$($gen $(: $bound)?),*>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body $(<$($gen $(: $bound)?),*>)? ($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
                fn avx512 $(<$($gen $(: $bound)?),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2 $(<$($gen $(: $bound)?),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if $crate::simd::has_avx512() {
                    // Safety: the features were detected.
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::simd::has_avx2() {
                    // Safety: the feature was detected.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use widest_fn;
