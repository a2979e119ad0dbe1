//! What `lampyr doctor` reports: the runtimes found, the isolation this
//! host allows, the data directory.

use std::path::Path;

use lampyr_api::{DoctorReport, InterpreterReport, IsolationFeature, Runtime, RuntimeReport};
use lampyr_runtime::Runtimes;
use lampyr_sandbox::Sandboxer;

/// What `lampyr doctor` reports: runtimes, isolation, data directory.
pub fn doctor_report(runtimes: &Runtimes, sandboxer: &Sandboxer, data_dir: &Path) -> DoctorReport {
    let rts = Runtime::ALL
        .iter()
        .map(|&rt| {
            let others = runtimes
                .installed(rt)
                .into_iter()
                .skip(usize::from(runtimes.get(rt).is_ok()))
                .map(|i| InterpreterReport {
                    version: i.version.clone(),
                    path: i.path.display().to_string(),
                })
                .collect();
            let problems = runtimes
                .problems(rt)
                .into_iter()
                .map(String::from)
                .collect();
            match runtimes.get(rt) {
                Ok(info) => RuntimeReport {
                    runtime: rt.to_string(),
                    found: true,
                    path: Some(info.path.display().to_string()),
                    version: Some(info.version.clone()),
                    problem: None,
                    others,
                    problems,
                },
                Err(e) => RuntimeReport {
                    runtime: rt.to_string(),
                    found: false,
                    path: None,
                    version: None,
                    problem: Some(e.to_string()),
                    others,
                    problems,
                },
            }
        })
        .collect();
    let isolation = sandboxer
        .features()
        .iter()
        .map(|f| IsolationFeature {
            feature: f.name.to_string(),
            enabled: f.enabled,
            detail: f.detail.clone(),
        })
        .collect();
    DoctorReport {
        runtimes: rts,
        isolation,
        data_dir: data_dir.display().to_string(),
        limits: None,
    }
}

/// The report of this host, without a running server (`lampyr doctor`):
/// what a server with `data_dir` and the default configuration would find.
pub fn local_report(data_dir: &Path) -> Result<DoctorReport, crate::ServerError> {
    let runtimes = Runtimes::discover();
    // The sandbox is probed in a scratch directory of its own: a server may
    // be running on `data_dir`, and its sandbox root is not ours to set up.
    let scratch = std::env::temp_dir().join(format!("lampyr-doctor-{}", std::process::id()));
    let cfg = crate::config::SandboxSection::default().to_config(&scratch)?;
    let report = Sandboxer::new(cfg)
        .map(|sandboxer| {
            let report = doctor_report(&runtimes, &sandboxer, data_dir);
            sandboxer.teardown();
            report
        })
        .map_err(crate::ServerError::from);
    let _ = std::fs::remove_dir_all(&scratch);
    report
}
