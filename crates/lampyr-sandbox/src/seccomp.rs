//! The seccomp policy: which system calls a function may not make.
//!
//! The policy is data, `seccomp.json` beside this file, compiled with
//! `seccompiler`. Denied calls fail with `EPERM` (`clone3` with `ENOSYS`, so
//! libc falls back to `clone`, whose namespace flags the policy can check).

use seccompiler::{sock_filter, BpfProgram, TargetArch};

/// The policy source.
pub const POLICY: &str = include_str!("seccomp.json");

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp is not supported on {0}")]
    Arch(String),
    #[error("compiling the seccomp policy: {0}")]
    Compile(String),
    #[error("a compiled seccomp filter is malformed: {0}")]
    Encoding(&'static str),
}

/// Size of one `sock_filter` instruction: code (u16), jt, jf (u8), k (u32).
const INSN: usize = 8;

/// A compiled filter as the hex of its `sock_filter` array in native byte
/// order: how the host hands it to the sandbox init and the Python zygote,
/// which install it without compiling the policy again.
pub fn to_hex(p: &BpfProgram) -> String {
    let mut out = String::with_capacity(p.len() * INSN * 2);
    for f in p {
        let mut b = [0u8; INSN];
        b[..2].copy_from_slice(&f.code.to_ne_bytes());
        b[2] = f.jt;
        b[3] = f.jf;
        b[4..].copy_from_slice(&f.k.to_ne_bytes());
        for x in b {
            out.push(char::from(b"0123456789abcdef"[usize::from(x >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(x & 0xf)]));
        }
    }
    out
}

/// The inverse of [`to_hex`].
pub fn from_hex(hex: &str) -> Result<BpfProgram, SeccompError> {
    let hex = hex.as_bytes();
    if hex.is_empty() || !hex.len().is_multiple_of(INSN * 2) {
        return Err(SeccompError::Encoding("not a whole number of instructions"));
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(SeccompError::Encoding("not lowercase hex")),
    };
    let mut prog = Vec::with_capacity(hex.len() / (INSN * 2));
    for insn in hex.chunks_exact(INSN * 2) {
        let mut b = [0u8; INSN];
        for (i, pair) in insn.chunks_exact(2).enumerate() {
            b[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        prog.push(sock_filter {
            code: u16::from_ne_bytes([b[0], b[1]]),
            jt: b[2],
            jf: b[3],
            k: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        });
    }
    Ok(prog)
}

/// Compiles the policy for this machine into BPF programs, applied in order.
pub fn compile() -> Result<Vec<BpfProgram>, SeccompError> {
    let arch: TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH.to_string()))?;
    let mut map = seccompiler::compile_from_json(POLICY.as_bytes(), arch)
        .map_err(|e| SeccompError::Compile(e.to_string()))?;
    let mut out = Vec::new();
    for name in ["deny", "no_clone3"] {
        out.push(
            map.remove(name)
                .ok_or_else(|| SeccompError::Compile(format!("policy has no filter '{name}'")))?,
        );
    }
    Ok(out)
}

/// The system calls the policy denies, by name (for documentation and tests).
pub fn denied_syscalls() -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(POLICY).expect("policy is JSON");
    let mut names: Vec<String> = v["deny"]["filter"]
        .as_array()
        .expect("filter list")
        .iter()
        .map(|r| r["syscall"].as_str().expect("syscall name").to_string())
        .collect();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_filters_survive_the_hex_hand_off() {
        for prog in compile().unwrap() {
            let back = from_hex(&to_hex(&prog)).unwrap();
            assert_eq!(back.len(), prog.len());
            for (a, b) in prog.iter().zip(&back) {
                assert_eq!((a.code, a.jt, a.jf, a.k), (b.code, b.jt, b.jf, b.k));
            }
        }
        assert!(from_hex("").is_err());
        assert!(from_hex("0011").is_err());
        assert!(from_hex(&"zz".repeat(8)).is_err());
    }

    #[test]
    fn policy_compiles_and_covers_the_required_calls() {
        let progs = compile().unwrap();
        assert_eq!(progs.len(), 2);
        assert!(progs.iter().all(|p| !p.is_empty()));
        let denied = denied_syscalls();
        for required in [
            "mount",
            "umount2",
            "pivot_root",
            "ptrace",
            "bpf",
            "kexec_load",
            "reboot",
            "init_module",
            "finit_module",
            "keyctl",
            "unshare",
            "setns",
            "clock_settime",
            "settimeofday",
        ] {
            assert!(
                denied.iter().any(|d| d == required),
                "{required} must be denied"
            );
        }
    }
}
