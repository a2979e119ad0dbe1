//! `serve --demo`: the bundled example functions, embedded in the binary and
//! deployed at start so a newcomer can `curl` at once.

use anyhow::Context as _;
use lampyr_scheduler::Scheduler;

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

pub async fn deploy_examples(sched: &Scheduler) -> anyhow::Result<()> {
    for (name, files) in EXAMPLES {
        let dir = std::env::temp_dir().join(format!("lampyr-demo-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        for (file, body) in *files {
            std::fs::write(dir.join(file), body)?;
        }
        let pkg = lampyr_store::pack_dir(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let pkg = pkg.with_context(|| format!("packaging example {name}"))?;
        let deployed = sched
            .deploy(name, pkg.into(), lampyr_scheduler::DeployOptions::default())
            .await?;
        tracing::info!(
            function = name,
            version = deployed.record.current.version,
            "example deployed"
        );
    }
    Ok(())
}
