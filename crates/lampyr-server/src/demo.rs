//! `serve --demo`: the bundled example functions, embedded in the binary and
//! deployed at start so a newcomer can `curl` at once.

use lampyr_scheduler::{DeployOptions, Scheduler, SchedulerError};

const EXAMPLES: &[(&str, &[(&str, &str)])] = &[
    (
        "hello-node",
        &[
            (
                "lampyr.toml",
                include_str!("../../../examples/hello-node/lampyr.toml"),
            ),
            (
                "index.js",
                include_str!("../../../examples/hello-node/index.js"),
            ),
        ],
    ),
    (
        "hello-python",
        &[
            (
                "lampyr.toml",
                include_str!("../../../examples/hello-python/lampyr.toml"),
            ),
            (
                "index.py",
                include_str!("../../../examples/hello-python/index.py"),
            ),
        ],
    ),
];

/// Why the examples could not be deployed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("packaging example {name}: {source}")]
    Package {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("deploying example {name}: {source}")]
    Deploy {
        name: &'static str,
        #[source]
        source: SchedulerError,
    },
}

/// Deploys every bundled example (checked, as `lampyr deploy` does).
pub async fn deploy_examples(sched: &Scheduler) -> Result<(), DemoError> {
    for (name, files) in EXAMPLES {
        let package = pack(name, files).map_err(|source| DemoError::Package { name, source })?;
        let deployed = sched
            .deploy(name, package.into(), DeployOptions::default())
            .await
            .map_err(|source| DemoError::Deploy { name, source })?;
        tracing::info!(
            function = name,
            version = deployed.record.current.version,
            "example deployed"
        );
    }
    Ok(())
}

/// The package of one example, packed from a scratch directory.
fn pack(name: &str, files: &[(&str, &str)]) -> std::io::Result<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("lampyr-demo-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let written = files
        .iter()
        .try_for_each(|(file, body)| std::fs::write(dir.join(file), body));
    let pkg = written.and_then(|()| lampyr_package::pack_dir(&dir).map_err(std::io::Error::other));
    let _ = std::fs::remove_dir_all(&dir);
    pkg
}
