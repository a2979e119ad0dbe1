//! The seccomp policy: which system calls a function may not make.
//!
//! The policy is data, `seccomp.json` beside this file, compiled with
//! `seccompiler`. Denied calls fail with `EPERM` (`clone3` with `ENOSYS`, so
//! libc falls back to `clone`, whose namespace flags the policy can check).

use seccompiler::{BpfProgram, TargetArch};

/// The policy source.
pub const POLICY: &str = include_str!("seccomp.json");

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp is not supported on {0}")]
    Arch(String),
    #[error("compiling the seccomp policy: {0}")]
    Compile(String),
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
