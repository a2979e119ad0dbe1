//! `lampyr deploy TEMPLATE`: the functions of another platform's template
//! (AWS SAM `template.yaml`, Function Compute `template.yml`, Serverless
//! Devs `s.yaml`), each packed from its code directory with the
//! `lampyr.toml` `lampyr-import` makes of it, and deployed as any
//! function is; `--dry-run` prints those manifests.

use std::io::Write;
use std::time::Instant;

use lampyr_import::ImportedFunction;

use crate::client::Client;
use crate::commands::{
    out, plan_json, print_json, report, shipped, upload, CommandError, DeployArgs,
};

pub(crate) fn deploy(client: &Client, args: &DeployArgs, json: bool) -> Result<(), CommandError> {
    let template = lampyr_import::read(&args.path)?;
    let format = template.format;
    let functions = template.select(args.function.as_deref())?;
    if args.dry_run {
        return dry_run(args, &functions, json);
    }
    if !json {
        eprintln!(
            "{}: {} function(s), read as a {}",
            args.path.display(),
            functions.len(),
            format.describe()
        );
    }
    let mut results = Vec::new();
    for f in &functions {
        let t = Instant::now();
        if !json {
            for n in &f.notes {
                eprintln!("note: {n}");
            }
            eprintln!(
                "[1/3] packaging {} with the lampyr.toml made of {} ({} runtime)",
                f.code_dir.display(),
                f.at,
                f.spec.runtime
            );
        }
        let pkg = lampyr_package::pack_dir_with_manifest(&f.code_dir, &f.manifest)
            .map_err(|source| package_err(f, source))?;
        let alias = args.alias.as_deref().or(f.alias.as_deref());
        let res = upload(client, &f.name, &pkg, args, alias, json)?;
        if !json {
            report(&res, t);
        }
        results.push(res);
    }
    if json {
        print_json(&results);
    }
    Ok(())
}

fn package_err(f: &ImportedFunction, source: lampyr_package::PackageError) -> CommandError {
    CommandError::Package {
        dir: f.code_dir.display().to_string(),
        source,
    }
}

/// Each function's manifest, in comments what it ships and what differs:
/// for one function the output is itself a valid lampyr.toml.
fn dry_run(
    args: &DeployArgs,
    functions: &[ImportedFunction],
    json: bool,
) -> Result<(), CommandError> {
    let mut docs = Vec::new();
    let mut o = out();
    for (i, f) in functions.iter().enumerate() {
        let pkg = lampyr_package::pack_dir_with_manifest(&f.code_dir, &f.manifest)
            .map_err(|source| package_err(f, source))?;
        let plan = lampyr_package::plan(&f.code_dir).map_err(|source| package_err(f, source))?;
        if json {
            let mut doc = plan_json(&f.name, &f.code_dir, &plan, pkg.len() as u64);
            doc["id"] = f.id.clone().into();
            doc["at"] = f.at.clone().into();
            doc["manifest"] = f.manifest.clone().into();
            doc["notes"] = f.notes.clone().into();
            doc["alias"] = f.alias.clone().into();
            docs.push(doc);
            continue;
        }
        if i > 0 {
            let _ = writeln!(o);
        }
        let dir = f.code_dir.display();
        let _ = writeln!(
            o,
            "# lampyr.toml of {}, made of {} in {}\n# ships it with {}; nothing was uploaded",
            f.name,
            f.at,
            args.path.display(),
            shipped(&f.code_dir, &plan, pkg.len() as u64)
        );
        for n in &f.notes {
            let _ = writeln!(o, "# note: {n}");
        }
        if let Some(a) = &f.alias {
            let _ = writeln!(
                o,
                "# each deploy points alias {a} at the new version (lampyr deploy --alias {a})"
            );
        }
        let _ = writeln!(
            o,
            "# to deploy the directory without the template: save this as {dir}/lampyr.toml, then `lampyr deploy {dir}`\n{}",
            f.manifest
        );
    }
    if json {
        print_json(&docs);
    }
    Ok(())
}
