//! `lampyr keys`: access keys for AWS SDKs and the AWS CLI, which sign their
//! calls of the Lambda Invoke API with them.

use std::io::Write as _;

use lampyr_api::keys::{KeyInfo, NewKey};

use crate::commands::{out, print_json, CommandError};
use crate::Client;

/// `lampyr keys create [--name N]`: issues a key; prints its secret (once).
pub fn create(client: &Client, name: &str, json: bool) -> Result<(), CommandError> {
    let body = serde_json::json!({ "name": name }).to_string();
    let key: NewKey = client
        .call("POST", "/api/v1/keys", Some(body.as_bytes()))?
        .json()?;
    if json {
        print_json(&key);
        return Ok(());
    }
    let mut o = out();
    let _ = writeln!(o, "access key id:      {}", key.info.id);
    let _ = writeln!(o, "secret access key:  {}", key.secret);
    drop(o);
    eprintln!(
        "the secret is shown only now. Point an SDK at this server with these credentials, e.g.\n  \
         AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY=… aws lambda invoke --endpoint-url {} --function-name NAME out.json",
        key.info.id,
        client.base()
    );
    Ok(())
}

/// `lampyr keys ls`.
pub fn list(client: &Client, json: bool) -> Result<(), CommandError> {
    let keys: Vec<KeyInfo> = client.get_json("/api/v1/keys")?;
    if json {
        print_json(&keys);
    } else if keys.is_empty() {
        let _ = writeln!(
            out(),
            "no access keys: create one with `lampyr keys create`"
        );
    } else {
        let mut o = out();
        let _ = writeln!(o, "{:<22} {:<26} NAME", "ID", "CREATED");
        for k in &keys {
            let _ = writeln!(o, "{:<22} {:<26} {}", k.id, k.created_at, k.name);
        }
    }
    Ok(())
}

/// `lampyr keys rm ID`.
pub fn remove(client: &Client, id: &str, json: bool) -> Result<(), CommandError> {
    let v: serde_json::Value = client
        .call("DELETE", &format!("/api/v1/keys/{id}"), None)?
        .json()?;
    if json {
        print_json(&v);
    } else {
        let _ = writeln!(out(), "access key {id} revoked");
    }
    Ok(())
}
