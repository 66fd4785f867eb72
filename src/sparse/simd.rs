//! The kernels' inner loops, written once over a small vector trait and
//! compiled three times: portable, AVX2 + FMA, and AVX-512, picked at run time.
//!
//! Why explicit vectors: a row of `Y = W·X` is a sum of scaled batch rows. Left
//! to the compiler, a batch of 100 is cut into fixed blocks (64 + 32 + 16 + an
//! overlapping 16), so the row's entries are read four times and 12 lanes are
//! computed twice. With masked loads and stores the whole row is one pass: up
//! to 8 AVX-512 vectors (128 batch columns) per set of sums, two sets in 16 of
//! the 32 registers.
//!
//! Every path does the same arithmetic for every output value: fused
//! multiply-adds, entries alternating between two sums added at the end, dot
//! products in 16 partial sums reduced as the same tree. So all paths give
//! bit-identical results (the portable path fuses only when compiled for a CPU
//! with FMA, as `.cargo/config.toml` does; otherwise it rounds twice).

use std::ops::Range;

use super::kernels::Epilogue;

/// Which instruction set the kernels' inner loops use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstructionSet {
    /// Plain Rust over 16-float arrays, vectorised by the compiler as far as
    /// the build's target allows. Runs everywhere.
    Portable,
    /// 8-float vectors with fused multiply-add (x86-64 with AVX2 and FMA).
    Avx2,
    /// 16-float vectors with masked loads and stores (x86-64 with AVX-512F).
    Avx512,
}

impl InstructionSet {
    /// Every instruction set, narrowest first.
    pub const ALL: [InstructionSet; 3] = [
        InstructionSet::Portable,
        InstructionSet::Avx2,
        InstructionSet::Avx512,
    ];

    /// The widest instruction set this CPU has: what the kernels use.
    pub fn best() -> Self {
        Self::ALL
            .into_iter()
            .rev()
            .find(|s| s.is_available())
            .unwrap_or(Self::Portable)
    }

    /// The instruction sets this CPU runs, narrowest first.
    pub fn available() -> Vec<Self> {
        Self::ALL.into_iter().filter(|s| s.is_available()).collect()
    }

    /// Whether this CPU has the instructions (detected once, then cached by std).
    pub fn is_available(self) -> bool {
        match self {
            InstructionSet::Portable => true,
            #[cfg(target_arch = "x86_64")]
            InstructionSet::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            InstructionSet::Avx512 => {
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// A short name for tables and flags.
    pub fn name(self) -> &'static str {
        match self {
            InstructionSet::Portable => "portable",
            InstructionSet::Avx2 => "avx2",
            InstructionSet::Avx512 => "avx512",
        }
    }
}

impl std::fmt::Display for InstructionSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A SIMD vector of `f32`, as the kernels need it.
///
/// # Safety
/// Implementations may use instructions the CPU must have: every method may
/// only run where [`InstructionSet::is_available`] holds for the set the
/// implementation belongs to. Pointers must be valid for the lanes accessed.
trait Vector: Copy {
    /// Floats per vector.
    const LANES: usize;
    /// Vectors in one set of running sums: two sets plus the operands must fit
    /// in the register file (32 registers with AVX-512, 16 with AVX2).
    const MAX_VECTORS: usize;
    /// Sixteen floats, in one register or two: the partial sums of a dot product.
    type Sixteen: Copy;
    /// Four floats in one register: a row's last columns when at most four
    /// are left after its whole vectors.
    type Four: FourLanes;

    unsafe fn zero() -> Self;
    unsafe fn splat(value: f32) -> Self;
    /// The first `lanes` (≤ `LANES`) floats at `src`; the other lanes are zero
    /// and nothing beyond `src + lanes` is read.
    unsafe fn load(src: *const f32, lanes: usize) -> Self;
    /// Writes the first `lanes` (≤ `LANES`) floats to `dst`, nothing beyond.
    unsafe fn store(self, dst: *mut f32, lanes: usize);
    /// `a · b + c`, one rounding.
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    /// Lane by lane `a > b ? a : b` (so `b` where `a` is NaN, as x86's `max`).
    unsafe fn max(a: Self, b: Self) -> Self;

    unsafe fn zero16() -> Self::Sixteen;
    /// The first `lanes` (≤ 16) floats at `src`, the other lanes zero; nothing
    /// beyond `src + lanes` is read.
    unsafe fn load16(src: *const f32, lanes: usize) -> Self::Sixteen;
    unsafe fn mul_add16(a: Self::Sixteen, b: Self::Sixteen, c: Self::Sixteen) -> Self::Sixteen;
    unsafe fn add16(a: Self::Sixteen, b: Self::Sixteen) -> Self::Sixteen;
    /// Writes the first `lanes` (≤ 16) floats to `dst`, nothing beyond.
    unsafe fn store16(v: Self::Sixteen, dst: *mut f32, lanes: usize);
    /// Lane by lane `y > 0 ? v : 0` (so `0` where `y` is NaN): ReLU's gradient.
    unsafe fn where_positive16(v: Self::Sixteen, y: Self::Sixteen) -> Self::Sixteen;
    /// The sum of the 16 lanes as a tree: lanes `i` and `i + 8` first, then
    /// `i` and `i + 4`, then `(0 + 2) + (1 + 3)`.
    unsafe fn sum16(v: Self::Sixteen) -> f32;
    /// [`Vector::sum16`] of four sums at once (the same tree for each, so the
    /// same results); a vector set may share the shuffles among the four.
    unsafe fn sum16x4(v: [Self::Sixteen; 4]) -> [f32; 4] {
        // SAFETY: forwarded from the caller.
        v.map(|v| unsafe { Self::sum16(v) })
    }
}

/// `a · b + c`, fused into one instruction where the target has FMA. Without
/// FMA, `mul_add` would be a slow library call, so we multiply and add.
#[inline(always)]
fn multiply_add(a: f32, b: f32, c: f32) -> f32 {
    if cfg!(target_feature = "fma") {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// The portable vectors' arithmetic, lane by lane over arrays of any width.
mod lanewise {
    use super::multiply_add;

    #[inline(always)]
    pub(super) fn mul_add<const L: usize>(a: [f32; L], b: [f32; L], c: [f32; L]) -> [f32; L] {
        std::array::from_fn(|l| multiply_add(a[l], b[l], c[l]))
    }

    #[inline(always)]
    pub(super) fn add<const L: usize>(a: [f32; L], b: [f32; L]) -> [f32; L] {
        std::array::from_fn(|l| a[l] + b[l])
    }

    /// `a > b ? a : b`, as x86's `max` (so `b` where `a` is NaN).
    #[inline(always)]
    pub(super) fn max<const L: usize>(a: [f32; L], b: [f32; L]) -> [f32; L] {
        std::array::from_fn(|l| if a[l] > b[l] { a[l] } else { b[l] })
    }
}

/// Four floats, the operations [`chunk_sums`] needs of them: a quarter of
/// an AVX-512 vector, half of an AVX2 one.
///
/// # Safety
/// As [`Vector`]'s: the CPU must have the instruction set the implementation
/// belongs to, and pointers must be valid for four floats.
trait FourLanes: Copy {
    unsafe fn zero() -> Self;
    unsafe fn splat(value: f32) -> Self;
    /// The four floats at `src`.
    unsafe fn load(src: *const f32) -> Self;
    /// Writes the four floats to `dst`.
    unsafe fn store(self, dst: *mut f32);
    /// `a · b + c`, one rounding.
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    /// Lane by lane `a > b ? a : b`, as [`Vector::max`].
    unsafe fn max(a: Self, b: Self) -> Self;
}

/// Four floats for the portable vector.
#[derive(Clone, Copy)]
struct PortableFour([f32; 4]);

impl FourLanes for PortableFour {
    #[inline(always)]
    unsafe fn zero() -> Self {
        PortableFour([0.0; 4])
    }
    #[inline(always)]
    unsafe fn splat(value: f32) -> Self {
        PortableFour([value; 4])
    }
    #[inline(always)]
    unsafe fn load(src: *const f32) -> Self {
        // SAFETY: the caller guarantees `src` is valid for four reads.
        PortableFour(unsafe { src.cast::<[f32; 4]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn store(self, dst: *mut f32) {
        // SAFETY: the caller guarantees `dst` is valid for four writes.
        unsafe { dst.cast::<[f32; 4]>().write_unaligned(self.0) }
    }
    #[inline(always)]
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
        PortableFour(lanewise::mul_add(a.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        PortableFour(lanewise::add(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn max(a: Self, b: Self) -> Self {
        PortableFour(lanewise::max(a.0, b.0))
    }
}

/// The portable vector: 16 floats the compiler keeps in whatever registers
/// the build's target has.
#[derive(Clone, Copy)]
struct Portable([f32; 16]);

impl Vector for Portable {
    const LANES: usize = 16;
    const MAX_VECTORS: usize = 4;
    type Sixteen = Self;
    type Four = PortableFour;

    #[inline(always)]
    unsafe fn zero() -> Self {
        Portable([0.0; 16])
    }
    #[inline(always)]
    unsafe fn splat(value: f32) -> Self {
        Portable([value; 16])
    }
    #[inline(always)]
    unsafe fn load(src: *const f32, lanes: usize) -> Self {
        if lanes == 16 {
            // SAFETY: the caller guarantees `src` is valid for 16 reads.
            Portable(unsafe { src.cast::<[f32; 16]>().read_unaligned() })
        } else {
            Portable(std::array::from_fn(|l| {
                if l < lanes {
                    // SAFETY: the caller guarantees `src` is valid for `lanes` reads.
                    unsafe { *src.add(l) }
                } else {
                    0.0
                }
            }))
        }
    }
    #[inline(always)]
    unsafe fn store(self, dst: *mut f32, lanes: usize) {
        if lanes == 16 {
            // SAFETY: the caller guarantees `dst` is valid for 16 writes.
            unsafe { dst.cast::<[f32; 16]>().write_unaligned(self.0) }
        } else {
            for (l, &value) in self.0[..lanes].iter().enumerate() {
                // SAFETY: the caller guarantees `dst` is valid for `lanes` writes.
                unsafe { *dst.add(l) = value }
            }
        }
    }
    #[inline(always)]
    unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
        Portable(lanewise::mul_add(a.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn add(a: Self, b: Self) -> Self {
        Portable(lanewise::add(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn max(a: Self, b: Self) -> Self {
        Portable(lanewise::max(a.0, b.0))
    }
    #[inline(always)]
    unsafe fn zero16() -> Self {
        // SAFETY: the portable vector needs no instruction set.
        unsafe { Self::zero() }
    }
    #[inline(always)]
    unsafe fn load16(src: *const f32, lanes: usize) -> Self {
        // SAFETY: `load`'s contract is this method's, which the caller keeps.
        unsafe { Self::load(src, lanes) }
    }
    #[inline(always)]
    unsafe fn mul_add16(a: Self, b: Self, c: Self) -> Self {
        // SAFETY: the portable vector needs no instruction set.
        unsafe { Self::mul_add(a, b, c) }
    }
    #[inline(always)]
    unsafe fn add16(a: Self, b: Self) -> Self {
        // SAFETY: the portable vector needs no instruction set.
        unsafe { Self::add(a, b) }
    }
    #[inline(always)]
    unsafe fn store16(v: Self, dst: *mut f32, lanes: usize) {
        // SAFETY: `store`'s contract is this method's, which the caller keeps.
        unsafe { v.store(dst, lanes) }
    }
    #[inline(always)]
    unsafe fn where_positive16(v: Self, y: Self) -> Self {
        Portable(std::array::from_fn(
            |l| if y.0[l] > 0.0 { v.0[l] } else { 0.0 },
        ))
    }
    #[inline(always)]
    unsafe fn sum16(v: Self) -> f32 {
        let eight: [f32; 8] = std::array::from_fn(|i| v.0[i] + v.0[i + 8]);
        let four: [f32; 4] = std::array::from_fn(|i| eight[i] + eight[i + 4]);
        (four[0] + four[2]) + (four[1] + four[3])
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 and AVX-512 vectors. Every intrinsic here needs its CPU feature;
    //! the methods run only inside the `#[target_feature]` entry points below
    //! them, which the dispatcher calls only after run-time detection.
    // Each method is unsafe for one reason, the CPU feature, which the entry
    // points establish; an `unsafe` block around every intrinsic would only
    // repeat that. Pointer arguments carry the same contract as `Vector`'s.
    #![allow(unsafe_op_in_unsafe_fn)]

    use super::{FourLanes, Vector};
    use std::arch::x86_64::*;

    /// Four floats in an SSE register, for both AVX2 and AVX-512 (with the
    /// VEX encoding and FMA, which both entry points enable).
    #[derive(Clone, Copy)]
    pub(super) struct Sse(__m128);

    impl FourLanes for Sse {
        #[inline(always)]
        unsafe fn zero() -> Self {
            Sse(_mm_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(value: f32) -> Self {
            Sse(_mm_set1_ps(value))
        }
        #[inline(always)]
        unsafe fn load(src: *const f32) -> Self {
            Sse(_mm_loadu_ps(src))
        }
        #[inline(always)]
        unsafe fn store(self, dst: *mut f32) {
            _mm_storeu_ps(dst, self.0)
        }
        #[inline(always)]
        unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
            Sse(_mm_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            Sse(_mm_add_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn max(a: Self, b: Self) -> Self {
            Sse(_mm_max_ps(a.0, b.0))
        }
    }

    #[derive(Clone, Copy)]
    pub(super) struct Avx2(__m256);

    /// `lanes` leading all-ones words: the mask of a partial AVX2 load or store.
    ///
    /// # Safety
    /// AVX must be available (`lanes > 8` panics on the slice).
    #[inline(always)]
    unsafe fn avx2_mask(lanes: usize) -> __m256i {
        const WORDS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
        // lanes ≤ 8, so the 8 words read start within WORDS and end by its end.
        _mm256_loadu_si256(WORDS[8 - lanes..].as_ptr().cast())
    }

    impl Vector for Avx2 {
        const LANES: usize = 8;
        const MAX_VECTORS: usize = 6;
        type Sixteen = [__m256; 2];
        type Four = Sse;

        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx2(_mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(value: f32) -> Self {
            Avx2(_mm256_set1_ps(value))
        }
        #[inline(always)]
        unsafe fn load(src: *const f32, lanes: usize) -> Self {
            // SAFETY (both): the caller guarantees `src` is valid for `lanes`
            // reads; a masked load does not touch the masked-off lanes.
            if lanes == 8 {
                Avx2(_mm256_loadu_ps(src))
            } else {
                Avx2(_mm256_maskload_ps(src, avx2_mask(lanes)))
            }
        }
        #[inline(always)]
        unsafe fn store(self, dst: *mut f32, lanes: usize) {
            // SAFETY: as for `load`, with writes.
            if lanes == 8 {
                _mm256_storeu_ps(dst, self.0)
            } else {
                _mm256_maskstore_ps(dst, avx2_mask(lanes), self.0)
            }
        }
        #[inline(always)]
        unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
            Avx2(_mm256_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            Avx2(_mm256_add_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn max(a: Self, b: Self) -> Self {
            Avx2(_mm256_max_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn zero16() -> [__m256; 2] {
            [_mm256_setzero_ps(); 2]
        }
        #[inline(always)]
        unsafe fn load16(src: *const f32, lanes: usize) -> [__m256; 2] {
            // SAFETY: the caller guarantees `lanes` readable floats at `src`;
            // the second half is read only where it has lanes.
            let low = Self::load(src, lanes.min(8)).0;
            let high = if lanes > 8 {
                Self::load(src.add(8), lanes - 8).0
            } else {
                _mm256_setzero_ps()
            };
            [low, high]
        }
        #[inline(always)]
        unsafe fn mul_add16(a: [__m256; 2], b: [__m256; 2], c: [__m256; 2]) -> [__m256; 2] {
            [
                _mm256_fmadd_ps(a[0], b[0], c[0]),
                _mm256_fmadd_ps(a[1], b[1], c[1]),
            ]
        }
        #[inline(always)]
        unsafe fn add16(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 2] {
            [_mm256_add_ps(a[0], b[0]), _mm256_add_ps(a[1], b[1])]
        }
        #[inline(always)]
        unsafe fn store16(v: [__m256; 2], dst: *mut f32, lanes: usize) {
            // SAFETY: the caller guarantees `lanes` writable floats at `dst`;
            // the second half is written only where it has lanes.
            Avx2(v[0]).store(dst, lanes.min(8));
            if lanes > 8 {
                Avx2(v[1]).store(dst.add(8), lanes - 8);
            }
        }
        #[inline(always)]
        unsafe fn where_positive16(v: [__m256; 2], y: [__m256; 2]) -> [__m256; 2] {
            // The comparison gives all-ones lanes where `y > 0` (false for NaN).
            let keep = |v, y| _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_GT_OQ>(y, _mm256_setzero_ps()));
            [keep(v[0], y[0]), keep(v[1], y[1])]
        }
        #[inline(always)]
        unsafe fn sum16(v: [__m256; 2]) -> f32 {
            sum8(_mm256_add_ps(v[0], v[1]))
        }
    }

    /// Lanes `i` and `i + 4` first, then `(0 + 2) + (1 + 3)`: the second half
    /// of [`Vector::sum16`]'s tree.
    ///
    /// # Safety
    /// AVX must be available.
    #[inline(always)]
    unsafe fn sum8(eight: __m256) -> f32 {
        let four = _mm_add_ps(
            _mm256_castps256_ps128(eight),
            _mm256_extractf128_ps(eight, 1),
        );
        let two = _mm_add_ps(four, _mm_movehl_ps(four, four));
        _mm_cvtss_f32(_mm_add_ss(two, _mm_shuffle_ps(two, two, 1)))
    }

    #[derive(Clone, Copy)]
    pub(super) struct Avx512(__m512);

    impl Vector for Avx512 {
        const LANES: usize = 16;
        const MAX_VECTORS: usize = 8;
        type Sixteen = Self;
        type Four = Sse;

        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx512(_mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(value: f32) -> Self {
            Avx512(_mm512_set1_ps(value))
        }
        #[inline(always)]
        unsafe fn load(src: *const f32, lanes: usize) -> Self {
            // SAFETY: the caller guarantees `src` is valid for `lanes` reads;
            // masked-off lanes are not accessed (no fault, no read).
            Avx512(_mm512_maskz_loadu_ps(lane_mask(lanes), src))
        }
        #[inline(always)]
        unsafe fn store(self, dst: *mut f32, lanes: usize) {
            // SAFETY: as for `load`, with writes.
            _mm512_mask_storeu_ps(dst, lane_mask(lanes), self.0)
        }
        #[inline(always)]
        unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
            Avx512(_mm512_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            Avx512(_mm512_add_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn max(a: Self, b: Self) -> Self {
            Avx512(_mm512_max_ps(a.0, b.0))
        }
        #[inline(always)]
        unsafe fn zero16() -> Self {
            Self::zero()
        }
        #[inline(always)]
        unsafe fn load16(src: *const f32, lanes: usize) -> Self {
            // SAFETY: forwarded to `load`, which reads `lanes` floats only.
            if lanes == 16 {
                Avx512(_mm512_loadu_ps(src))
            } else {
                Self::load(src, lanes)
            }
        }
        #[inline(always)]
        unsafe fn mul_add16(a: Self, b: Self, c: Self) -> Self {
            Self::mul_add(a, b, c)
        }
        #[inline(always)]
        unsafe fn add16(a: Self, b: Self) -> Self {
            Self::add(a, b)
        }
        #[inline(always)]
        unsafe fn store16(v: Self, dst: *mut f32, lanes: usize) {
            // SAFETY: forwarded to `store`, which writes `lanes` floats only.
            if lanes == 16 {
                _mm512_storeu_ps(dst, v.0)
            } else {
                v.store(dst, lanes)
            }
        }
        #[inline(always)]
        unsafe fn where_positive16(v: Self, y: Self) -> Self {
            // The comparison is false for NaN, so those lanes become zero.
            let positive = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(y.0, _mm512_setzero_ps());
            Avx512(_mm512_maskz_mov_ps(positive, v.0))
        }
        #[inline(always)]
        unsafe fn sum16(v: Self) -> f32 {
            let low = _mm512_castps512_ps256(v.0);
            let high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v.0), 1));
            sum8(_mm256_add_ps(low, high))
        }
        /// The four trees side by side in one register: each level's pairs
        /// are brought into line by lane permutations and added once for all
        /// four sums (11 shuffles and adds instead of 4 × 9).
        #[inline(always)]
        unsafe fn sum16x4([a, b, c, d]: [Self; 4]) -> [f32; 4] {
            // Lanes `i` and `i + 8`: a's eight sums, then b's (and c's, d's).
            let halves = |x: __m512, y: __m512| {
                let low = _mm512_set_epi32(23, 22, 21, 20, 19, 18, 17, 16, 7, 6, 5, 4, 3, 2, 1, 0);
                let high =
                    _mm512_set_epi32(31, 30, 29, 28, 27, 26, 25, 24, 15, 14, 13, 12, 11, 10, 9, 8);
                _mm512_add_ps(
                    _mm512_permutex2var_ps(x, low, y),
                    _mm512_permutex2var_ps(x, high, y),
                )
            };
            let (ab, cd) = (halves(a.0, b.0), halves(c.0, d.0));
            // Lanes `i` and `i + 4` of each eight: four sums per argument.
            let low = _mm512_set_epi32(27, 26, 25, 24, 19, 18, 17, 16, 11, 10, 9, 8, 3, 2, 1, 0);
            let high = _mm512_set_epi32(31, 30, 29, 28, 23, 22, 21, 20, 15, 14, 13, 12, 7, 6, 5, 4);
            let four = _mm512_add_ps(
                _mm512_permutex2var_ps(ab, low, cd),
                _mm512_permutex2var_ps(ab, high, cd),
            );
            // `0 + 2` and `1 + 3` in lanes 0 and 1 of each group of four, then their sum.
            let two = _mm512_add_ps(four, _mm512_permute_ps(four, 0b01_00_11_10));
            let one = _mm512_add_ps(two, _mm512_permute_ps(two, 0b10_11_00_01));
            let firsts = _mm512_permutexvar_ps(
                _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0),
                one,
            );
            let mut out = [0.0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), _mm512_castps512_ps128(firsts));
            out
        }
    }

    /// [`super::push_off_background`] with AVX-512: 16 values at a time are
    /// compared with the background, and those that differ (minus it) and
    /// their positions are packed to the front of two registers (in-register
    /// compression: the memory form is slow on some CPUs) and stored whole
    /// at the vectors' ends, which then move on by the number kept.
    ///
    /// # Safety
    /// The CPU must have AVX-512F. (Unlike this module's other functions,
    /// this one also writes past the vectors' lengths, so its other unsafe
    /// operations are marked and argued one by one.)
    #[target_feature(enable = "avx512f")]
    #[deny(unsafe_op_in_unsafe_fn)]
    pub(super) unsafe fn push_off_background_avx512(
        values: &[f32],
        background: f32,
        first: u32,
        positions: &mut Vec<u32>,
        offsets: &mut Vec<f32>,
    ) {
        let n = values.len();
        // Room for every value plus one whole vector: a store writes 16
        // lanes, of which only the kept ones become part of the vectors.
        positions.reserve(n + 16);
        offsets.reserve(n + 16);
        let b = _mm512_set1_ps(background);
        let lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        let (positions_end, offsets_end) = (positions.len(), offsets.len());
        let mut kept = 0;
        for start in (0..n).step_by(16) {
            let mask = lane_mask((n - start).min(16));
            // SAFETY: a masked load reads only the `min(16, n − start)`
            // lanes left in `values`; lanes beyond `n` are zero and not kept.
            let x = unsafe { _mm512_maskz_loadu_ps(mask, values.as_ptr().add(start)) };
            let keep = _mm512_mask_cmp_ps_mask::<_CMP_NEQ_UQ>(mask, x, b);
            let position = _mm512_add_epi32(lane, _mm512_set1_epi32((first + start as u32) as i32));
            // SAFETY: `kept ≤ start`, so both stores' 16 lanes end by the
            // old length + `n + 16`, inside the capacity reserved above.
            unsafe {
                _mm512_storeu_epi32(
                    positions.as_mut_ptr().add(positions_end + kept).cast(),
                    _mm512_maskz_compress_epi32(keep, position),
                );
                _mm512_storeu_ps(
                    offsets.as_mut_ptr().add(offsets_end + kept),
                    _mm512_maskz_compress_ps(keep, _mm512_sub_ps(x, b)),
                );
            }
            kept += keep.count_ones() as usize;
        }
        // SAFETY: the first `kept` lanes past the old ends were written above
        // (a `u32` and an `f32` are valid for any bits), within the capacity.
        unsafe {
            positions.set_len(positions_end + kept);
            offsets.set_len(offsets_end + kept);
        }
    }

    /// The mask of the first `lanes` (≤ 16) lanes.
    #[inline(always)]
    fn lane_mask(lanes: usize) -> __mmask16 {
        ((1u32 << lanes) - 1) as __mmask16
    }

    /// The entry points: the generic kernels compiled with each feature set.
    /// Callers must have checked the features at run time.
    macro_rules! entry_points {
        ($vector:ty, $features:literal, $sums:ident, $dots:ident, $epilogue:ident) => {
            /// # Safety
            /// The CPU must have the features, and the block be as
            /// [`super::weighted_sums_with`] requires.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $sums<I: Iterator<Item = (f32, usize)> + Clone>(
                block: &mut super::SumBlock<'_>,
                entries: &impl Fn(usize) -> I,
            ) {
                // SAFETY: forwarded from the caller.
                super::weighted_sums_with::<$vector, I>(block, entries)
            }

            /// # Safety
            /// The CPU must have the features, and the block be as
            /// [`super::dot_products`] checks it.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $dots(block: &super::DotBlock<'_>, grad: &mut [f32]) {
                // SAFETY: forwarded from the caller.
                super::dot_products_with::<$vector>(block, grad)
            }

            /// # Safety
            /// The CPU must have the features, and the block be as
            /// [`super::epilogue_grads`] checks it.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $epilogue(block: &mut super::EpilogueGrads<'_>) {
                // SAFETY: forwarded from the caller.
                super::epilogue_grads_with::<$vector>(block)
            }
        };
    }
    entry_points!(Avx2, "avx2,fma", sums_avx2, dots_avx2, epilogue_avx2);
    entry_points!(
        Avx512,
        "avx512f,avx2,fma",
        sums_avx512,
        dots_avx512,
        epilogue_avx512
    );
}

/// One task of `Y = W·X` or `dX = Wᵀ·dY`: output rows `rows`, batch columns
/// `cols`, each output row the sum of the source rows its entries name, scaled.
pub(super) struct SumBlock<'a> {
    /// Output rows, numbered as the `entries` function takes them.
    pub rows: Range<usize>,
    /// Batch columns computed.
    pub cols: Range<usize>,
    /// The rows being summed, `stride` floats each.
    pub source: &'a [f32],
    /// Floats per source row: the full batch.
    pub stride: usize,
    /// `rows.len() × cols.len()`, each row contiguous.
    pub out: ndarray::ArrayViewMut2<'a, f32>,
    /// Add the sums to what `out` holds instead of overwriting it.
    pub accumulate: bool,
    /// What happens to each finished sum before it is stored.
    pub epilogue: Epilogue<'a>,
}

/// One task of the weight gradient: for each stored entry `(r, c)` of rows
/// `rows`, the dot product of row `r` of `dy` with row `c` of `x`.
pub(super) struct DotBlock<'a> {
    pub rows: Range<usize>,
    pub indptr: &'a [usize],
    pub indices: &'a [usize],
    /// `W.rows() × batch`.
    pub dy: &'a [f32],
    /// `W.cols() × batch`.
    pub x: &'a [f32],
    pub batch: usize,
}

/// The backward pass of an [`Epilogue`] over a `rows × cols` gradient `dy`.
pub(super) struct EpilogueGrads<'a> {
    /// `dY`, row-major, `cols` floats a row; masked in place.
    pub dy: &'a mut [f32],
    /// The forward output `y` (same shape) if a ReLU was applied.
    pub relu_output: Option<&'a [f32]>,
    /// One sum of `dY` per row, if the forward added a bias.
    pub bias_grad: Option<&'a mut [f32]>,
    /// `dY`'s shape (a row may be empty: its bias gradient is then 0).
    pub rows: usize,
    pub cols: usize,
}

/// Computes `block` with `isa`: `out[r, c] = Σ w · source[i, c]` over the
/// `(w, i)` of `entries(r)`, the entries alternating between two sums.
///
/// # Panics
/// If the block is inconsistent, an entry names a row beyond `source`, or
/// `isa` is not available on this CPU.
pub(super) fn weighted_sums<I>(
    isa: InstructionSet,
    mut block: SumBlock<'_>,
    entries: &impl Fn(usize) -> I,
) where
    I: Iterator<Item = (f32, usize)> + Clone,
{
    let (rows, cols) = block.out.dim();
    assert_eq!((rows, cols), (block.rows.len(), block.cols.len()));
    assert!(block.cols.end <= block.stride || block.cols.is_empty());
    assert!(isa.is_available(), "{isa} is not available on this CPU");
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        cols == 1 || block.out.strides()[1] == 1,
        "output rows must be contiguous"
    );
    // SAFETY: `isa` is available (checked above); the generic code checks
    // every source row it reads and writes only inside `block.out`.
    unsafe {
        match isa {
            InstructionSet::Portable => sums_portable(&mut block, entries),
            #[cfg(target_arch = "x86_64")]
            InstructionSet::Avx2 => x86::sums_avx2(&mut block, entries),
            #[cfg(target_arch = "x86_64")]
            InstructionSet::Avx512 => x86::sums_avx512(&mut block, entries),
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("checked by is_available"),
        }
    }
}

/// Computes `block` with `isa` into `grad`, one value per entry of its rows.
///
/// # Panics
/// As [`weighted_sums`].
pub(super) fn dot_products(isa: InstructionSet, block: DotBlock<'_>, grad: &mut [f32]) {
    let entries = block.indptr[block.rows.start]..block.indptr[block.rows.end];
    assert_eq!(grad.len(), entries.len());
    assert!(isa.is_available(), "{isa} is not available on this CPU");
    // SAFETY: `isa` is available (checked above); the generic code reads
    // through checked slices.
    unsafe {
        match isa {
            InstructionSet::Portable => dots_portable(&block, grad),
            #[cfg(target_arch = "x86_64")]
            InstructionSet::Avx2 => x86::dots_avx2(&block, grad),
            #[cfg(target_arch = "x86_64")]
            InstructionSet::Avx512 => x86::dots_avx512(&block, grad),
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("checked by is_available"),
        }
    }
}

/// Computes `block` with `isa`: `dy ← dy ⊙ [y > 0]` where the ReLU's
/// output is given, then each row's sum into `bias_grad` where that is given,
/// the sum of [`crate::dense::sum`] to the bit.
///
/// # Panics
/// If the slices' lengths disagree, or `isa` is not available on this CPU.
pub(super) fn epilogue_grads(isa: InstructionSet, mut block: EpilogueGrads<'_>) {
    let len = block.rows * block.cols;
    assert_eq!(block.dy.len(), len, "dy is not rows × cols");
    assert!(block.relu_output.is_none_or(|y| y.len() == len));
    assert!(
        block
            .bias_grad
            .as_ref()
            .is_none_or(|b| b.len() == block.rows)
    );
    assert!(isa.is_available(), "{isa} is not available on this CPU");
    // SAFETY: `isa` is available (checked above); the generic code reads and
    // writes a row's `lanes` floats from `start` only where `start + lanes`
    // is within the row, of slices checked above to hold `rows` whole rows.
    unsafe {
        match isa {
            InstructionSet::Portable => epilogue_portable(&mut block),
            #[cfg(target_arch = "x86_64")]
            InstructionSet::Avx2 => x86::epilogue_avx2(&mut block),
            #[cfg(target_arch = "x86_64")]
            InstructionSet::Avx512 => x86::epilogue_avx512(&mut block),
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("checked by is_available"),
        }
    }
}

/// The portable entry points: the generic code with the build's own target.
///
/// # Safety
/// The blocks must be as the generic functions require (what
/// [`weighted_sums`], [`dot_products`] and [`epilogue_grads`] check).
unsafe fn sums_portable<I: Iterator<Item = (f32, usize)> + Clone>(
    block: &mut SumBlock<'_>,
    entries: &impl Fn(usize) -> I,
) {
    // SAFETY: the portable vector needs no CPU feature.
    unsafe { weighted_sums_with::<Portable, I>(block, entries) }
}

/// # Safety
/// As [`sums_portable`].
unsafe fn dots_portable(block: &DotBlock<'_>, grad: &mut [f32]) {
    // SAFETY: the portable vector needs no CPU feature.
    unsafe { dot_products_with::<Portable>(block, grad) }
}

/// # Safety
/// As [`sums_portable`].
unsafe fn epilogue_portable(block: &mut EpilogueGrads<'_>) {
    // SAFETY: the portable vector needs no CPU feature.
    unsafe { epilogue_grads_with::<Portable>(block) }
}

/// [`weighted_sums`] with vectors `V`: the batch columns in chunks of up to
/// `V::MAX_VECTORS` vectors (the last chunk also takes up to four columns
/// more), every row of the block per chunk.
///
/// # Safety
/// `V`'s instructions must be available, and `block` must be as
/// [`weighted_sums`] checks it: `out` is `rows.len() × cols.len()` with
/// contiguous rows (or one column), and `cols.end ≤ stride`.
#[inline(always)]
unsafe fn weighted_sums_with<V: Vector, I>(block: &mut SumBlock<'_>, entries: &impl Fn(usize) -> I)
where
    I: Iterator<Item = (f32, usize)> + Clone,
{
    let chunk = V::LANES * V::MAX_VECTORS;
    let mut start = block.cols.start;
    while start < block.cols.end {
        let left = block.cols.end - start;
        // A last few columns go with the chunk before them, as its four-lane
        // tail: a chunk of their own would read every entry once more.
        let width = if left <= chunk + 4 { left } else { chunk };
        let shape = ChunkShape::of::<V>(width);
        // The guards below are constants: shapes a vector type never makes
        // (no vector and no tail, more than `MAX_VECTORS`) compile to nothing.
        let fits = |vectors: usize| vectors <= V::MAX_VECTORS;
        macro_rules! chunk_sums_with {
            ($($n:literal)*) => {
                match (shape.vectors, shape.tail.is_some()) {
                    $(
                        ($n, false) if fits($n) && $n != 0 => {
                            chunk_sums::<V, I, $n, false>(block, entries, start, shape)
                        }
                        ($n, true) if fits($n) => {
                            chunk_sums::<V, I, $n, true>(block, entries, start, shape)
                        }
                    )*
                    _ => unreachable!("a chunk has at most MAX_VECTORS vectors"),
                }
            };
        }
        // SAFETY: forwarded; `start..start + width` lies inside `block.cols`
        // and `shape` was made for `width`.
        unsafe { chunk_sums_with!(0 1 2 3 4 5 6 7 8) }
        start += width;
    }
}

/// How the columns of a chunk map onto vectors: whole vectors from the
/// first column, then either a four-lane tail (when at most four columns are
/// left over) or one more vector ending at the chunk's last column.
///
/// An end vector or tail overlaps the vector before it when the width is not
/// a multiple of its lanes: a column's sum is the same computation in either
/// vector, so the overlap rewrites identical values, and every load and
/// store is whole. Only a chunk narrower than four columns, or narrower than
/// one vector with more than four, uses a partial (masked) vector.
#[derive(Clone, Copy)]
struct ChunkShape {
    /// Vectors of `LANES` (or, for a narrow chunk, fewer) lanes.
    vectors: usize,
    /// The last vector: its first column and how many it holds; the others
    /// start at `v · LANES` and are whole.
    last: (usize, usize),
    /// The first column of the four-lane tail, if there is one.
    tail: Option<usize>,
}

impl ChunkShape {
    /// The shape of a chunk of `width > 0` columns for vectors `V`.
    fn of<V: Vector>(width: usize) -> Self {
        let (whole, rest) = (width / V::LANES, width % V::LANES);
        let last_whole = (whole.saturating_sub(1) * V::LANES, V::LANES);
        let (vectors, last, tail) = if rest == 0 {
            (whole, last_whole, None)
        } else if rest <= 4 && width >= 4 {
            (whole, last_whole, Some(width - 4))
        } else if whole > 0 {
            (whole + 1, (width - V::LANES, V::LANES), None)
        } else {
            (1, (0, width), None)
        };
        ChunkShape {
            vectors,
            last,
            tail,
        }
    }

    /// The first column and lane count of vector `v`.
    #[inline(always)]
    fn place<V: Vector>(self, v: usize) -> (usize, usize) {
        if v + 1 < self.vectors {
            (v * V::LANES, V::LANES)
        } else {
            self.last
        }
    }
}

/// A set of running sums: `N` vectors and, if the chunk has one, a four-lane
/// tail (left at zero otherwise).
#[derive(Clone, Copy)]
struct Sums<V: Vector, const N: usize> {
    vectors: [V; N],
    tail: V::Four,
}

/// Columns `start..` of every row of the block, shaped as `shape` says with
/// `N` vectors and a tail if `TAIL`: the row's entries alternate between two
/// sets of sums, added at the end.
///
/// # Safety
/// `V`'s instructions must be available; the chunk's columns must lie inside
/// `block.cols`, and `shape` must have been made for them with `N` vectors
/// and a tail if and only if `TAIL`.
#[inline(always)]
unsafe fn chunk_sums<V: Vector, I, const N: usize, const TAIL: bool>(
    block: &mut SumBlock<'_>,
    entries: &impl Fn(usize) -> I,
    start: usize,
    shape: ChunkShape,
) where
    I: Iterator<Item = (f32, usize)> + Clone,
{
    let tail = shape.tail.unwrap_or(0);
    let source_rows = block.source.len() / block.stride;
    let source = block.source.as_ptr();
    let row_stride = block.out.strides()[0];
    let out = block.out.as_mut_ptr();
    for (n, r) in block.rows.clone().enumerate() {
        // One comparison per entry, with a message that needs nothing kept
        // for it (a formatted row number costs a store per entry).
        let source_row = |i: usize| -> *const f32 {
            assert!(i < source_rows, "an entry names a row beyond the source");
            // SAFETY: row `i < source_rows` starts at `i · stride` and holds
            // `stride` floats, all of the chunk's columns among them.
            unsafe { source.add(i * block.stride + start) }
        };
        // SAFETY: `V` is available; every load reads columns of the chunk
        // of one source row (checked above) or of output row `n`, every store
        // writes columns of the chunk of output row `n`, which lie in `out`.
        unsafe {
            let row = out.offset(n as isize * row_stride + (start - block.cols.start) as isize);
            let zero = Sums::<V, N> {
                vectors: [V::zero(); N],
                tail: V::Four::zero(),
            };
            let (mut even, mut odd) = (zero, zero);
            if block.accumulate {
                for (v, sum) in even.vectors.iter_mut().enumerate() {
                    let (offset, lanes) = shape.place::<V>(v);
                    *sum = V::load(row.add(offset), lanes);
                }
                if TAIL {
                    even.tail = V::Four::load(row.add(tail));
                }
            }
            let mut entries = entries(r);
            while let Some((w, i)) = entries.next() {
                accumulate::<V, N, TAIL>(&mut even, w, source_row(i), shape);
                let Some((w, i)) = entries.next() else { break };
                accumulate::<V, N, TAIL>(&mut odd, w, source_row(i), shape);
            }
            let bias = block.epilogue.bias.map(|b| b[r]);
            for v in 0..N {
                let (offset, lanes) = shape.place::<V>(v);
                let mut sum = V::add(even.vectors[v], odd.vectors[v]);
                if let Some(bias) = bias {
                    sum = V::add(sum, V::splat(bias));
                }
                if block.epilogue.relu {
                    sum = V::max(sum, V::zero());
                }
                sum.store(row.add(offset), lanes);
            }
            if TAIL {
                let mut sum = V::Four::add(even.tail, odd.tail);
                if let Some(bias) = bias {
                    sum = V::Four::add(sum, V::Four::splat(bias));
                }
                if block.epilogue.relu {
                    sum = V::Four::max(sum, V::Four::zero());
                }
                sum.store(row.add(tail));
            }
        }
    }
}

/// `sums += w · x` over the vectors (and tail) of `shape`.
///
/// # Safety
/// `V`'s instructions must be available; `x` must be valid for reads of
/// every column of the chunk.
#[inline(always)]
unsafe fn accumulate<V: Vector, const N: usize, const TAIL: bool>(
    sums: &mut Sums<V, N>,
    w: f32,
    x: *const f32,
    shape: ChunkShape,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        let splat = V::splat(w);
        for (v, sum) in sums.vectors.iter_mut().enumerate() {
            let (offset, lanes) = shape.place::<V>(v);
            *sum = V::mul_add(splat, V::load(x.add(offset), lanes), *sum);
        }
        if TAIL {
            let x = V::Four::load(x.add(shape.tail.unwrap_or(0)));
            sums.tail = V::Four::mul_add(V::Four::splat(w), x, sums.tail);
        }
    }
}

/// [`dot_products`] with vectors `V`: four entries at a time share each load
/// of the `dy` row.
///
/// # Safety
/// `V`'s instructions must be available.
#[inline(always)]
unsafe fn dot_products_with<V: Vector>(block: &DotBlock<'_>, grad: &mut [f32]) {
    let DotBlock {
        indptr,
        indices,
        dy,
        x,
        batch,
        ..
    } = *block;
    let first = indptr[block.rows.start];
    for r in block.rows.clone() {
        let dy_row = &dy[r * batch..][..batch];
        let x_row = |k: usize| &x[indices[k] * batch..][..batch];
        let (mut k, end) = (indptr[r], indptr[r + 1]);
        while k + 4 <= end {
            let rows = [x_row(k), x_row(k + 1), x_row(k + 2), x_row(k + 3)];
            // SAFETY: `V` is available (forwarded); the rows are checked
            // slices of `batch` floats, as `dy_row` is.
            grad[k - first..][..4].copy_from_slice(&unsafe { dots::<V, 4>(dy_row, rows) });
            k += 4;
        }
        for k in k..end {
            // SAFETY: as above, for one row.
            grad[k - first] = unsafe { dots::<V, 1>(dy_row, [x_row(k)]) }[0];
        }
    }
}

/// The dot products of `a` with each of `G` equally long rows `b`: 16 partial
/// sums each (the last block zero-padded), reduced as a fixed tree. The
/// arithmetic of one product does not depend on `G`.
///
/// # Safety
/// `V`'s instructions must be available.
#[inline(always)]
unsafe fn dots<V: Vector, const G: usize>(a: &[f32], b: [&[f32]; G]) -> [f32; G] {
    assert!(b.iter().all(|row| row.len() == a.len()));
    // SAFETY: `V` is available (forwarded); every load reads at most the
    // `a.len() − start` floats left of a row checked to be `a.len()` long.
    unsafe {
        let mut sums = [V::zero16(); G];
        for start in (0..a.len()).step_by(16) {
            let lanes = (a.len() - start).min(16);
            let a_block = V::load16(a.as_ptr().add(start), lanes);
            for (sum, row) in sums.iter_mut().zip(&b) {
                *sum = V::mul_add16(a_block, V::load16(row.as_ptr().add(start), lanes), *sum);
            }
        }
        let mut out = [0.0; G];
        for (out, sums) in out.chunks_exact_mut(4).zip(sums.chunks_exact(4)) {
            out.copy_from_slice(&V::sum16x4([sums[0], sums[1], sums[2], sums[3]]));
        }
        let done = G / 4 * 4;
        for (out, &sum) in out[done..].iter_mut().zip(&sums[done..]) {
            *out = V::sum16(sum);
        }
        out
    }
}

/// [`epilogue_grads`] with vectors `V`, row by row in blocks of 16 columns:
/// the ReLU mask applied and stored, whole blocks added into 16 partial sums
/// and the partial last block's values added one by one after the tree, as
/// [`crate::dense::sum`] does.
///
/// The partial last block is handled as the whole vector that ends the row
/// (overlapping the block before it, whose masked values it rewrites
/// unchanged), loaded before anything is stored to the row: masked stores,
/// and loads that overlap a store just made, are slow.
///
/// # Safety
/// `V`'s instructions must be available.
#[inline(always)]
unsafe fn epilogue_grads_with<V: Vector>(block: &mut EpilogueGrads<'_>) {
    let cols = block.cols;
    let (whole, rest) = (cols / 16 * 16, cols % 16);
    // Where the last vector starts and how many lanes it has.
    let (last_start, last_lanes) = if cols >= 16 {
        (cols - 16, 16)
    } else {
        (0, cols)
    };
    for r in 0..block.rows {
        let dy = &mut block.dy[r * cols..][..cols];
        let y = block.relu_output.map(|y| &y[r * cols..][..cols]);
        // SAFETY: `V` is available (forwarded); every load and store covers
        // `lanes` floats from `start`, with `start + lanes ≤ cols`, of a row
        // of `cols` floats.
        unsafe {
            let masked = |dy: &[f32], start: usize, lanes: usize| {
                let grad = V::load16(dy.as_ptr().add(start), lanes);
                match y {
                    Some(y) => V::where_positive16(grad, V::load16(y.as_ptr().add(start), lanes)),
                    None => grad,
                }
            };
            let last = (rest > 0).then(|| masked(dy, last_start, last_lanes));
            let mut sums = V::zero16();
            for start in (0..whole).step_by(16) {
                let grad = masked(dy, start, 16);
                if y.is_some() {
                    V::store16(grad, dy.as_mut_ptr().add(start), 16);
                }
                sums = V::add16(sums, grad);
            }
            let mut tail = [0.0f32; 16];
            if let Some(last) = last {
                if y.is_some() {
                    V::store16(last, dy.as_mut_ptr().add(last_start), last_lanes);
                }
                V::store16(last, tail.as_mut_ptr(), 16);
            }
            if let Some(bias_grad) = block.bias_grad.as_deref_mut() {
                // The row's last `rest` values: the end of the last vector.
                let tail: f32 = tail[last_lanes - rest..last_lanes].iter().sum();
                bias_grad[r] = V::sum16(sums) + tail;
            }
        }
    }
}

/// Appends `first + k` to `positions` and `values[k] − background` to
/// `offsets` for every `values[k]` that differs from `background` (NaN
/// included), in order: the sparse part of a mostly constant row. AVX-512
/// compresses 16 values at a time; other instruction sets take the plain loop.
///
/// # Panics
/// If `isa` is not available on this CPU.
pub(crate) fn push_off_background(
    isa: InstructionSet,
    values: &[f32],
    background: f32,
    first: u32,
    positions: &mut Vec<u32>,
    offsets: &mut Vec<f32>,
) {
    assert!(isa.is_available(), "{isa} is not available on this CPU");
    #[cfg(target_arch = "x86_64")]
    if isa == InstructionSet::Avx512 {
        // SAFETY: AVX-512 is available (checked above).
        unsafe {
            x86::push_off_background_avx512(values, background, first, positions, offsets);
        }
        return;
    }
    // Many rows (an image's border) are background in the whole batch.
    if values.iter().all(|&x| x == background) {
        return;
    }
    // Branch-free: write every value, keep those off the background (a loop
    // that branches on each took 31 µs for fc1's 784 × 48 MNIST inputs, this
    // one 19 µs).
    let start = positions.len();
    positions.resize(start + values.len(), 0);
    offsets.resize(start + values.len(), 0.0);
    let mut end = start;
    for (k, &x) in values.iter().enumerate() {
        positions[end] = first + k as u32;
        offsets[end] = x - background;
        end += usize::from(x != background);
    }
    positions.truncate(end);
    offsets.truncate(end);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every instruction set keeps the same values, in order, as the
        /// plain definition: rows shorter than a vector, whole vectors and a
        /// tail; all, none or some values on the background; a background of
        /// 0 (`−0` then counts as background), a negative one, and NaN (then
        /// nothing is background); NaN values kept. Half of the rows are
        /// all background or all off it, so that whole vectors of each occur.
        #[test]
        fn push_off_background_keeps_what_differs(
            background in prop_oneof![Just(0.0f32), Just(-0.42), Just(f32::NAN)],
            picks in prop::collection::vec(0u8..4, 0..70),
            uniform in prop_oneof![Just(None), Just(None), Just(Some(0u8)), Just(Some(3u8))],
            first in 0u32..1000,
            already in 0usize..20,
        ) {
            let values: Vec<f32> = (picks.iter().enumerate())
                .map(|(k, &pick)| match uniform.unwrap_or(pick) {
                    0 | 1 => background,
                    2 => if k % 2 == 0 { -0.0 } else { f32::NAN },
                    _ => (k as f32 * 0.37).sin(),
                })
                .collect();
            let expected: Vec<(u32, u32)> = (values.iter().enumerate())
                .filter(|&(_, &x)| x != background)
                .map(|(k, &x)| (first + k as u32, (x - background).to_bits()))
                .collect();
            for isa in InstructionSet::available() {
                // Appends after what the vectors already hold.
                let mut positions = vec![7; already];
                let mut offsets = vec![0.5; already];
                push_off_background(isa, &values, background, first, &mut positions, &mut offsets);
                prop_assert_eq!(&positions[..already], &vec![7; already][..]);
                let got: Vec<(u32, u32)> = positions[already..]
                    .iter()
                    .zip(&offsets[already..])
                    .map(|(&p, v)| (p, v.to_bits()))
                    .collect();
                prop_assert_eq!(got, expected.clone(), "{}", isa);
            }
        }
    }

    #[test]
    fn push_off_background_subtracts_the_background() {
        for isa in InstructionSet::available() {
            let (mut positions, mut offsets) = (Vec::new(), Vec::new());
            let values = [-0.5f32, 1.5, -0.5, -0.5, 0.0];
            push_off_background(isa, &values, -0.5, 10, &mut positions, &mut offsets);
            assert_eq!(positions, [11, 14], "{isa}");
            assert_eq!(offsets, [2.0, 0.5], "{isa}");
        }
    }

    /// The sums kernel against its scalar definition, bit for bit, on every
    /// instruction set: every width up to 300 (a partial vector, a four-lane
    /// tail, an overlapping last vector, whole vectors, several chunks), in a
    /// block that starts at column 0, 1 or 128 of a wider source, overwriting
    /// or accumulating, with and without the bias and ReLU. The output rows
    /// are views into wider rows whose extra columns must stay untouched.
    #[test]
    fn weighted_sums_match_the_scalar_definition() {
        let stride = 128 + 300;
        let source: Vec<f32> = (0..5 * stride)
            .map(|k| ((k * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        // Row 0 has no entries; the others one to four, some sharing a source row.
        let rows: [&[(f32, usize)]; 4] = [
            &[],
            &[(0.5, 3)],
            &[(-1.25, 0), (2.0, 4), (0.75, 1)],
            &[(1.5, 2), (-0.5, 2), (0.25, 4), (3.0, 0)],
        ];
        let entries = |r: usize| rows[r].iter().copied();
        let bias = [0.5f32, -0.25, 1.0, -3.0];
        let earlier = |r: usize, c: usize| (r * 31 + c) as f32 / 64.0 - 1.0;
        for isa in InstructionSet::available() {
            let fma = |a: f32, b: f32, c: f32| match isa {
                InstructionSet::Portable => multiply_add(a, b, c),
                _ => a.mul_add(b, c),
            };
            for first in [0, 1, 128] {
                for width in 1..=300 {
                    for accumulate in [false, true] {
                        for epilogue in [
                            Epilogue::default(),
                            Epilogue {
                                bias: Some(&bias),
                                relu: true,
                            },
                        ] {
                            const MARK: f32 = -7.0;
                            let mut wide =
                                ndarray::Array2::from_shape_fn((4, width + 3), |(r, c)| {
                                    if c < width { earlier(r, c) } else { MARK }
                                });
                            let out = wide.slice_mut(ndarray::s![.., ..width]);
                            let block = SumBlock {
                                rows: 0..4,
                                cols: first..first + width,
                                source: &source,
                                stride,
                                out,
                                accumulate,
                                epilogue,
                            };
                            weighted_sums(isa, block, &entries);
                            for r in 0..4 {
                                for c in 0..width + 3 {
                                    let expected = if c >= width {
                                        MARK
                                    } else {
                                        let column = first + c;
                                        let mut sums =
                                            [if accumulate { earlier(r, c) } else { 0.0 }, 0.0];
                                        for (k, &(w, i)) in rows[r].iter().enumerate() {
                                            sums[k % 2] =
                                                fma(w, source[i * stride + column], sums[k % 2]);
                                        }
                                        let mut sum = sums[0] + sums[1];
                                        if let Some(bias) = epilogue.bias {
                                            sum += bias[r];
                                        }
                                        if epilogue.relu {
                                            // `max(sum, 0)` as x86 computes it: 0 for NaN too.
                                            sum = if sum > 0.0 { sum } else { 0.0 };
                                        }
                                        sum
                                    };
                                    assert_eq!(
                                        wide[(r, c)].to_bits(),
                                        expected.to_bits(),
                                        "{isa}, columns {first}..+{width}, accumulate {accumulate}, \
                                         epilogue {epilogue:?}: row {r} column {c}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
