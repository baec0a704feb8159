//! The instruction-set cap every SIMD path of the process honours.
//!
//! Kernels and optimizers pick their fastest path at run time; this module caps that choice at
//! one [`IsaLevel`] for the whole process, like `ATEN_CPU_CAPABILITY` in PyTorch or
//! `ONEDNN_MAX_CPU_ISA` in oneDNN, so every path can be run (and tested, and measured) on one
//! machine. The cap comes from the `BITNET_ISA` environment variable (`auto`, `scalar`, `avx2`,
//! `avx-vnni`, `avx512`, `amx` or, on aarch64, `neon`) and from a plugin option; [`resolve`] combines them (the lower one wins) and
//! refuses a level this CPU lacks, naming the missing features, and [`set_cap`] makes it the
//! process's cap. A process that never sets it reads `BITNET_ISA` on first use.
//!
//! Self-contained (std only) so that any plugin can depend on it without the kernels.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

/// The environment variable that caps the instruction set.
pub const ENV_VAR: &str = "BITNET_ISA";

/// An instruction-set level: every path of a level also runs on the levels above it on the same
/// architecture. The x86 levels and [`IsaLevel::Neon`] never both run on one CPU, so their
/// relative order only matters within one architecture (`scalar` is below both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IsaLevel {
    /// Portable Rust, any CPU.
    Scalar,
    /// x86-64 AVX2 with FMA: what AMD Zen 2 and Zen 3 have (their integer products widen to
    /// 16 bits, `vpmaddubsw`/`vpmaddwd`).
    Avx2,
    /// [`IsaLevel::Avx2`] plus AVX-VNNI (`vpdpbusd` on 256-bit registers): Intel's client CPUs
    /// since Alder Lake, which have no AVX-512. A CPU with AVX-512 need not have it (AMD Zen 4,
    /// Intel Xeons before Sapphire Rapids); there the `avx512` level is supported and this one is
    /// not, and the AVX2 paths of the levels below run at `avx512` and above.
    AvxVnni,
    /// x86-64 AVX-512 F, BW and VL (kernels also use VNNI and BF16 where the CPU has them).
    Avx512,
    /// [`IsaLevel::Avx512`] plus Intel AMX tiles with bf16 and int8 products (Xeons since
    /// Sapphire Rapids), on an OS that lets the process use the tile registers (Linux grants them on
    /// request, see [`amx_usable`]).
    Amx,
    /// aarch64 Advanced SIMD (kernels also use the `dotprod` extension where the CPU has it).
    Neon,
}

impl IsaLevel {
    /// Every level, lowest first.
    pub const ALL: [IsaLevel; 6] = [
        IsaLevel::Scalar,
        IsaLevel::Avx2,
        IsaLevel::AvxVnni,
        IsaLevel::Avx512,
        IsaLevel::Amx,
        IsaLevel::Neon,
    ];

    /// The name `BITNET_ISA` and the plugin options use.
    pub fn name(self) -> &'static str {
        match self {
            IsaLevel::Scalar => "scalar",
            IsaLevel::Avx2 => "avx2",
            IsaLevel::AvxVnni => "avx-vnni",
            IsaLevel::Avx512 => "avx512",
            IsaLevel::Amx => "amx",
            IsaLevel::Neon => "neon",
        }
    }

    /// The CPU features the level needs (x86 or aarch64 feature names).
    pub fn required_features(self) -> &'static [&'static str] {
        match self {
            IsaLevel::Scalar => &[],
            IsaLevel::Avx2 => &["avx2", "fma"],
            IsaLevel::AvxVnni => &["avx2", "fma", "avxvnni"],
            IsaLevel::Avx512 => &["avx512f", "avx512bw", "avx512vl"],
            IsaLevel::Amx => {
                &["avx512f", "avx512bw", "avx512vl", "amx-tile", "amx-bf16", "amx-int8"]
            }
            IsaLevel::Neon => &["neon"],
        }
    }

    /// The required features this CPU lacks (empty when it runs the level).
    pub fn missing_features(self) -> Vec<&'static str> {
        self.required_features().iter().copied().filter(|f| !cpu_has(f)).collect()
    }

    /// Whether this CPU runs the level (runtime detection, ignoring the cap). Kernels and
    /// [`vectorized_fn!`] copies ask on every call, so the answer for every level is worked out
    /// once and kept as a bit mask (matching feature names on each call cost a dispatch of the
    /// inference model's short dot products more than the products).
    pub fn is_supported(self) -> bool {
        static SUPPORTED: AtomicU8 = AtomicU8::new(UNSET);
        let mut mask = SUPPORTED.load(Ordering::Relaxed);
        if mask == UNSET {
            mask = IsaLevel::ALL
                .iter()
                .enumerate()
                .filter(|(_, l)| l.required_features().iter().all(|f| cpu_has(f)))
                .fold(0u8, |m, (i, _)| m | (1 << i));
            SUPPORTED.store(mask, Ordering::Relaxed);
        }
        mask & (1 << self as u8) != 0
    }

    fn from_u8(v: u8) -> Option<IsaLevel> {
        IsaLevel::ALL.get(usize::from(v)).copied()
    }
}

impl fmt::Display for IsaLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A requested cap: a level, or `auto` (the best level this CPU runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IsaChoice {
    /// The best level this CPU runs.
    #[default]
    Auto,
    /// At most this level.
    Level(IsaLevel),
}

impl FromStr for IsaChoice {
    type Err = IsaError;

    fn from_str(s: &str) -> Result<Self, IsaError> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("auto") || t.is_empty() {
            return Ok(IsaChoice::Auto);
        }
        IsaLevel::ALL
            .iter()
            .find(|l| t.eq_ignore_ascii_case(l.name()))
            .map(|&l| IsaChoice::Level(l))
            .ok_or_else(|| IsaError::Unknown(s.to_string()))
    }
}

impl fmt::Display for IsaChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IsaChoice::Auto => f.write_str("auto"),
            IsaChoice::Level(l) => f.write_str(l.name()),
        }
    }
}

/// Why a cap was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IsaError {
    /// The name is not `auto`, `scalar`, `avx2`, `avx-vnni`, `avx512`, `amx` or `neon`.
    Unknown(String),
    /// This CPU lacks features the level needs.
    Unsupported {
        /// Where the request came from (`BITNET_ISA`, or a plugin option).
        source: String,
        /// The requested level.
        level: IsaLevel,
        /// The features this CPU lacks.
        missing: Vec<&'static str>,
    },
}

impl fmt::Display for IsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IsaError::Unknown(s) => {
                write!(
                    f,
                    "unknown instruction set {s:?}: expected auto, scalar, avx2, avx-vnni, \
                     avx512, amx or neon"
                )
            }
            IsaError::Unsupported { source, level, missing } => write!(
                f,
                "{source} asks for {level}, but this CPU lacks {} (best available: {})",
                missing.join(", "),
                detect()
            ),
        }
    }
}

impl std::error::Error for IsaError {}

/// Whether this CPU has the feature `name` (one of [`IsaLevel::required_features`], or an
/// extension [`describe`] names).
fn cpu_has(name: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match name {
            "avx2" => std::is_x86_feature_detected!("avx2"),
            "fma" => std::is_x86_feature_detected!("fma"),
            "avx512f" => std::is_x86_feature_detected!("avx512f"),
            "avx512bw" => std::is_x86_feature_detected!("avx512bw"),
            "avx512vl" => std::is_x86_feature_detected!("avx512vl"),
            "avx512vnni" => std::is_x86_feature_detected!("avx512vnni"),
            "avx512bf16" => std::is_x86_feature_detected!("avx512bf16"),
            "avxvnni" => std::is_x86_feature_detected!("avxvnni"),
            "amx-tile" | "amx-bf16" | "amx-int8" => amx_usable() && amx_cpuid(name),
            _ => false,
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        match name {
            "neon" => std::arch::is_aarch64_feature_detected!("neon"),
            "dotprod" => std::arch::is_aarch64_feature_detected!("dotprod"),
            _ => false,
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = name;
        false
    }
}

/// Whether the CPU reports the AMX feature `name` (CPUID leaf 7: EDX bit 22 AMX-BF16, 24
/// AMX-TILE, 25 AMX-INT8). `is_x86_feature_detected!` does not take the AMX names on stable
/// Rust yet, so the bits are read here.
/// The register is read once: CPUID is slow (a virtual machine traps it to the hypervisor)
/// and kernels check their path on every call.
#[cfg(target_arch = "x86_64")]
fn amx_cpuid(name: &str) -> bool {
    static EDX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 7 reads as zeros where unsupported.
    #[allow(unused_unsafe)]
    let edx = *EDX.get_or_init(|| unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx);
    let bit = match name {
        "amx-bf16" => 22,
        "amx-tile" => 24,
        "amx-int8" => 25,
        _ => return false,
    };
    edx & (1 << bit) != 0
}

/// Whether this process may use the AMX tile registers: the CPU has AMX-TILE and the OS
/// granted the process the tile data state. Linux (5.16 and later) hands the state out only
/// on request, `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`; this makes the request
/// once per process (the grant covers every thread) and remembers the answer. Other systems:
/// no.
pub fn amx_usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            if !amx_cpuid("amx-tile") {
                return false;
            }
            const SYS_ARCH_PRCTL: usize = 158;
            const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
            const XFEATURE_XTILEDATA: usize = 18;
            let ret: isize;
            // A raw system call: this crate is std-only and std has no wrapper for
            // arch_prctl. SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM only changes this
            // process's permitted XSAVE features; `syscall` clobbers rcx and r11.
            unsafe {
                std::arch::asm!(
                    "syscall",
                    inlateout("rax") SYS_ARCH_PRCTL as isize => ret,
                    in("rdi") ARCH_REQ_XCOMP_PERM,
                    in("rsi") XFEATURE_XTILEDATA,
                    lateout("rcx") _,
                    lateout("r11") _,
                    options(nostack),
                );
            }
            ret == 0
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// The best level this CPU runs.
pub fn detect() -> IsaLevel {
    IsaLevel::ALL.iter().rev().copied().find(|l| l.is_supported()).unwrap_or(IsaLevel::Scalar)
}

/// The level `choice` stands for on this CPU, or an error naming what it lacks. `source` says
/// where the request came from, for the message.
pub fn check(choice: IsaChoice, source: &str) -> Result<IsaLevel, IsaError> {
    match choice {
        IsaChoice::Auto => Ok(detect()),
        IsaChoice::Level(level) => {
            let missing = level.missing_features();
            if missing.is_empty() {
                Ok(level)
            } else {
                Err(IsaError::Unsupported { source: source.to_string(), level, missing })
            }
        }
    }
}

/// The choice `BITNET_ISA` makes (`auto` when unset), or an error for an unknown name.
pub fn env_choice() -> Result<IsaChoice, IsaError> {
    match std::env::var(ENV_VAR) {
        Ok(v) => v.parse(),
        Err(_) => Ok(IsaChoice::Auto),
    }
}

/// The cap of a plugin option `option` (named `source` in messages) combined with
/// `BITNET_ISA`: the lower of the two, after checking each runs on this CPU.
pub fn resolve(option: IsaChoice, source: &str) -> Result<IsaLevel, IsaError> {
    let from_env = check(env_choice()?, ENV_VAR)?;
    let from_option = check(option, source)?;
    Ok(from_env.min(from_option))
}

/// Not yet set: [`cap`] reads `BITNET_ISA` on first use.
const UNSET: u8 = u8::MAX;
static CAP: AtomicU8 = AtomicU8::new(UNSET);

/// Makes `level` the process's cap, after checking this CPU runs it.
pub fn set_cap(level: IsaLevel) -> Result<(), IsaError> {
    check(IsaChoice::Level(level), "the instruction-set cap")?;
    CAP.store(level as u8, Ordering::Relaxed);
    Ok(())
}

/// The process's cap: the last [`set_cap`], else what `BITNET_ISA` asks for. A process that
/// never called [`set_cap`] and has an unusable `BITNET_ISA` (plugins refuse it at build time
/// with [`resolve`]) gets a one-line warning on stderr and the best level this CPU runs at or
/// below the request.
pub fn cap() -> IsaLevel {
    if let Some(level) = IsaLevel::from_u8(CAP.load(Ordering::Relaxed)) {
        return level;
    }
    let level = match env_choice().and_then(|c| check(c, ENV_VAR)) {
        Ok(level) => level,
        Err(e) => {
            let fallback = match env_choice() {
                Ok(IsaChoice::Level(asked)) => IsaLevel::ALL
                    .into_iter()
                    .rev()
                    .find(|l| *l <= asked && l.is_supported())
                    .unwrap_or(IsaLevel::Scalar),
                _ => detect(),
            };
            eprintln!("warning: {e}; using {fallback}");
            fallback
        }
    };
    // Racing first readers compute the same value; only one warning matters.
    let _ = CAP.compare_exchange(UNSET, level as u8, Ordering::Relaxed, Ordering::Relaxed);
    IsaLevel::from_u8(CAP.load(Ordering::Relaxed)).unwrap_or(level)
}

/// Whether paths of `level` may run: within the cap and supported by this CPU.
#[inline]
pub fn allows(level: IsaLevel) -> bool {
    level <= cap() && level.is_supported()
}

/// The active path in words, for run headers and benchmarks: `"avx512 (vnni, bf16)"`,
/// `"avx2 (fma)"`, `"avx-vnni (avx2, fma)"`, `"neon (dotprod)"` or `"scalar"`, followed by `" [capped; the CPU has avx512]"` when the CPU
/// could do more.
pub fn describe() -> String {
    let level = cap();
    let mut s = match level {
        IsaLevel::Scalar => "scalar".to_string(),
        IsaLevel::Avx2 => "avx2 (fma)".to_string(),
        IsaLevel::AvxVnni => "avx-vnni (avx2, fma)".to_string(),
        IsaLevel::Avx512 => {
            let extras: Vec<&str> = [("avx512vnni", "vnni"), ("avx512bf16", "bf16")]
                .iter()
                .filter(|(f, _)| cpu_has(f))
                .map(|&(_, short)| short)
                .collect();
            if extras.is_empty() {
                "avx512".to_string()
            } else {
                format!("avx512 ({})", extras.join(", "))
            }
        }
        IsaLevel::Amx => "amx (avx512 vnni, bf16; amx-bf16, amx-int8 tiles)".to_string(),
        IsaLevel::Neon if cpu_has("dotprod") => "neon (dotprod)".to_string(),
        IsaLevel::Neon => "neon".to_string(),
    };
    let best = detect();
    if level < best {
        s.push_str(&format!(" [capped; the CPU has {best}]"));
    }
    s
}

/// Defines `fn NAME(args) -> R` that calls `BODY(args)` (an `#[inline(always)]` function of
/// the same signature) compiled for the widest x86 vector level [`allows`]: AVX-512 F/BW/VL,
/// else AVX2 + FMA, else the baseline build. `BODY` and every `#[inline(always)]` function it
/// calls are inlined into a `target_feature` copy per level, so LLVM vectorizes their plain loops
/// for 512- or 256-bit registers where the baseline x86-64 build has SSE2. For elementwise loops
/// (the codecs') that need no intrinsics:
///
/// ```ignore
/// bitnet_framework::vectorized_fn!(pub fn absmax(v: &[f32]) -> f32 = absmax_body);
/// ```
///
/// Results are bit-identical at every level: the same IEEE operations on wider registers (Rust
/// never contracts a multiply and an add into an FMA on its own), integer sums exact.
///
/// Written here rather than taken from the `multiversion` crate, which dispatches on the CPU
/// alone: `BITNET_ISA` must cap these loops as it caps the kernels. (A generic wrapper taking a
/// closure does not work: LLVM need not inline the closure into the `target_feature` function,
/// and for the codecs' loops it did not.)
#[macro_export]
macro_rules! vectorized_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) = $body:path) => {
        $crate::vectorized_fn!($(#[$m])* $vis fn $name($($arg: $ty),*) -> () = $body);
    };
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) = $body:path,
        test $at:ident) => {
        $crate::vectorized_fn!($(#[$m])* $vis fn $name($($arg: $ty),*) -> () = $body, test $at);
    };
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty = $body:path,
        test $at:ident) => {
        $crate::vectorized_fn!($(#[$m])* $vis fn $name($($arg: $ty),*) -> $ret = $body);

        /// The vectorized copy of `level` (ignoring the cap), for tests that hold every level to
        /// the baseline; `None` when this CPU does not run `level`.
        #[cfg(test)]
        fn $at(level: $crate::isa::IsaLevel, $($arg: $ty),*) -> Option<$ret> {
            if !level.is_supported() {
                return None;
            }
            Some(match level {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `is_supported` checked the features (AMX implies AVX-512 F/BW/VL).
                $crate::isa::IsaLevel::Avx512 | $crate::isa::IsaLevel::Amx => unsafe {
                    $crate::__vectorized_copy!(avx512, ($($arg: $ty),*) -> $ret = $body)
                },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above, AVX2 and FMA.
                $crate::isa::IsaLevel::Avx2 | $crate::isa::IsaLevel::AvxVnni => unsafe {
                    $crate::__vectorized_copy!(avx2, ($($arg: $ty),*) -> $ret = $body)
                },
                _ => $body($($arg),*),
            })
        }
    };
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty
        = $body:path) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                if $crate::isa::allows($crate::isa::IsaLevel::Avx512) {
                    // SAFETY: `allows` checked that this CPU has AVX-512 F, BW and VL.
                    return unsafe {
                        $crate::__vectorized_copy!(avx512, ($($arg: $ty),*) -> $ret = $body)
                    };
                }
                if $crate::isa::allows($crate::isa::IsaLevel::Avx2) {
                    // SAFETY: as above, AVX2 and FMA.
                    return unsafe {
                        $crate::__vectorized_copy!(avx2, ($($arg: $ty),*) -> $ret = $body)
                    };
                }
            }
            $body($($arg),*)
        }
    };
}

/// One `target_feature` copy of a [`vectorized_fn!`] body, called with the arguments of the
/// same names. Not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __vectorized_copy {
    (avx512, ($($arg:ident: $ty:ty),*) -> $ret:ty = $body:path) => {{
        /// # Safety
        /// The CPU must have AVX-512 F, BW and VL.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn avx512($($arg: $ty),*) -> $ret {
            $body($($arg),*)
        }
        avx512($($arg),*)
    }};
    (avx2, ($($arg:ident: $ty:ty),*) -> $ret:ty = $body:path) => {{
        /// # Safety
        /// The CPU must have AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2($($arg: $ty),*) -> $ret {
            $body($($arg),*)
        }
        avx2($($arg),*)
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_case_insensitively_and_unknown_ones_are_refused() {
        assert_eq!("auto".parse::<IsaChoice>(), Ok(IsaChoice::Auto));
        assert_eq!("AVX2".parse::<IsaChoice>(), Ok(IsaChoice::Level(IsaLevel::Avx2)));
        assert_eq!(" scalar ".parse::<IsaChoice>(), Ok(IsaChoice::Level(IsaLevel::Scalar)));
        assert_eq!("avx512".parse::<IsaChoice>(), Ok(IsaChoice::Level(IsaLevel::Avx512)));
        let err = "sse9".parse::<IsaChoice>().expect_err("unknown");
        assert!(err.to_string().contains("sse9") && err.to_string().contains("neon"));
        for level in IsaLevel::ALL {
            assert_eq!(level.name().parse::<IsaChoice>(), Ok(IsaChoice::Level(level)));
        }
    }

    #[test]
    fn levels_are_ordered_and_detection_is_consistent() {
        assert!(IsaLevel::Scalar < IsaLevel::Avx2 && IsaLevel::Avx2 < IsaLevel::AvxVnni);
        assert!(IsaLevel::AvxVnni < IsaLevel::Avx512);
        for (i, level) in IsaLevel::ALL.into_iter().enumerate() {
            assert_eq!(IsaLevel::from_u8(i as u8), Some(level), "the cap is stored by index");
        }
        assert!(IsaLevel::Scalar < IsaLevel::Neon);
        assert!(IsaLevel::Scalar.is_supported());
        let best = detect();
        assert!(best.is_supported());
        // The x86 levels and neon exclude each other; within an architecture a supported level
        // implies the ones below it.
        assert!(!(IsaLevel::Avx2.is_supported() && IsaLevel::Neon.is_supported()));
        for level in IsaLevel::ALL {
            if level.is_supported() {
                assert!(level <= best, "{level}");
            }
            assert_eq!(check(IsaChoice::Level(level), "test").is_ok(), level.is_supported());
        }
        if IsaLevel::Avx512.is_supported() || IsaLevel::AvxVnni.is_supported() {
            assert!(IsaLevel::Avx2.is_supported());
        }
        if IsaLevel::Amx.is_supported() {
            assert!(IsaLevel::Avx512.is_supported() && amx_usable());
        }
        assert_eq!(check(IsaChoice::Auto, "test"), Ok(best));
    }

    #[test]
    fn a_missing_level_names_its_missing_features() {
        for level in IsaLevel::ALL.into_iter().filter(|l| !l.is_supported()) {
            let err = check(IsaChoice::Level(level), "kernel option isa").expect_err("missing");
            let msg = err.to_string();
            assert!(msg.contains("kernel option isa") && msg.contains(level.name()), "{msg}");
            for f in level.missing_features() {
                assert!(msg.contains(f), "{msg}");
            }
        }
    }

    /// The only test that touches the process-wide cap (tests run in parallel).
    #[test]
    fn the_cap_follows_set_cap_and_describe_names_it() {
        for level in IsaLevel::ALL.into_iter().filter(|l| l.is_supported()) {
            set_cap(level).expect("supported");
            assert_eq!(cap(), level);
            assert!(allows(IsaLevel::Scalar) && allows(level));
            assert!(IsaLevel::ALL.iter().all(|&l| allows(l) == (l <= level && l.is_supported())));
            assert!(describe().starts_with(level.name()), "{}", describe());
        }
        if !IsaLevel::Avx512.is_supported() {
            assert!(set_cap(IsaLevel::Avx512).is_err());
        }
    }
}
