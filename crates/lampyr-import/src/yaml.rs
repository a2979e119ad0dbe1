//! A template's YAML as nodes that know where they are
//! (`Resources.Hello.Properties.Timeout`), so that every refusal names the
//! field, and the references templates make resolved as they are read:
//! CloudFormation's and ROS's `!Ref`/`!Sub` (short and long forms) to a
//! parameter's default, Serverless Devs' `${vars.x}` and `${env(X)}`.

use std::collections::BTreeMap;
use std::rc::Rc;

use serde_yaml_ng::Value;

/// Why a template cannot be imported as written: the field and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub path: String,
    pub message: String,
}

pub(crate) type Res<T> = Result<T, Refusal>;

pub(crate) fn refuse<T>(path: &str, message: impl Into<String>) -> Res<T> {
    Err(Refusal {
        path: path.to_string(),
        message: message.into(),
    })
}

/// How references are written in a template of this kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// CloudFormation (SAM) or ROS (Function Compute's `fun`): `!Ref`,
    /// `!Sub`, `Fn::*`; `pseudo` is the prefix of pseudo parameters
    /// (`AWS::`, `ALIYUN::`).
    Intrinsics { pseudo: &'static str },
    /// Serverless Devs: `${vars.NAME}`, `${env(NAME)}`.
    Devs,
}

/// What references resolve against.
#[derive(Debug)]
pub(crate) struct Scope {
    pub dialect: Dialect,
    /// Parameters (CloudFormation, ROS) with their `Default`, or `None`
    /// for one without.
    pub params: BTreeMap<String, Option<Value>>,
    /// Other resources' logical names (a `!Ref` to one is refused by name).
    pub resources: Vec<String>,
    /// Serverless Devs' `vars`.
    pub vars: Value,
}

/// One value of the template and its path.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub v: Value,
    pub path: String,
    scope: Rc<Scope>,
}

impl Node {
    pub fn root(v: Value, scope: Scope) -> Node {
        Node {
            v,
            path: String::new(),
            scope: Rc::new(scope),
        }
    }

    fn child(&self, v: Value, key: &str) -> Node {
        let path = if self.path.is_empty() {
            key.to_string()
        } else if key.starts_with('[') {
            format!("{}{key}", self.path)
        } else {
            format!("{}.{key}", self.path)
        };
        Node {
            v,
            path,
            scope: self.scope.clone(),
        }
    }

    /// The node with its references resolved.
    fn resolved(&self) -> Res<Node> {
        Ok(Node {
            v: resolve(&self.v, &self.path, &self.scope)?,
            path: self.path.clone(),
            scope: self.scope.clone(),
        })
    }

    fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "empty",
            Value::Bool(_) => "true or false",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Sequence(_) => "a list",
            Value::Mapping(_) => "a map",
            Value::Tagged(_) => "a tagged value",
        }
    }

    /// The entries of a map, in the template's order.
    pub fn entries(&self) -> Res<Vec<(String, Node)>> {
        let me = self.resolved()?;
        match &me.v {
            Value::Mapping(m) => m
                .iter()
                .map(|(k, v)| {
                    let k = match k {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        other => {
                            return refuse(
                                &me.path,
                                format!("has a key that is {}: keys are names", Self::kind(other)),
                            )
                        }
                    };
                    Ok((k.clone(), me.child(v.clone(), &k)))
                })
                .collect(),
            Value::Null => Ok(Vec::new()),
            other => refuse(
                &me.path,
                format!("must be a map, not {}", Self::kind(other)),
            ),
        }
    }

    /// Map entry `key`, if there is one.
    pub fn get(&self, key: &str) -> Res<Option<Node>> {
        Ok(self
            .entries()?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, n)| n))
    }

    /// Map entry `key`, which must be there.
    pub fn need(&self, key: &str, what: &str) -> Res<Node> {
        self.get(key)?.map_or_else(
            || {
                refuse(
                    &self.child(Value::Null, key).path,
                    format!("is missing: {what}"),
                )
            },
            Ok,
        )
    }

    /// The items of a list (a single value is a list of one).
    pub fn items(&self) -> Res<Vec<Node>> {
        let me = self.resolved()?;
        match &me.v {
            Value::Sequence(s) => Ok(s
                .iter()
                .enumerate()
                .map(|(i, v)| me.child(v.clone(), &format!("[{i}]")))
                .collect()),
            Value::Null => Ok(Vec::new()),
            _ => Ok(vec![me]),
        }
    }

    /// A scalar as text: a string, or a number or boolean written out
    /// (an environment variable `PORT: 8080`).
    pub fn text(&self) -> Res<String> {
        let me = self.resolved()?;
        match &me.v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => refuse(
                &me.path,
                format!("must be a string, not {}", Self::kind(other)),
            ),
        }
    }

    /// A whole number (or a string of one, as a parameter's default is).
    pub fn int(&self) -> Res<i64> {
        let me = self.resolved()?;
        let n = match &me.v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        n.map_or_else(
            || {
                refuse(
                    &me.path,
                    format!("must be a whole number, not {}", Self::kind(&me.v)),
                )
            },
            Ok,
        )
    }

    /// True or false (or the strings `true`/`false`).
    pub fn bool(&self) -> Res<bool> {
        let me = self.resolved()?;
        match &me.v {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
            other => refuse(
                &me.path,
                format!("must be true or false, not {}", Self::kind(other)),
            ),
        }
    }

    /// Refuses the first key that is neither `supported` nor `ignored`
    /// (harmless metadata), naming it, what lampyr would have it do, and
    /// what is supported here.
    pub fn check_keys(&self, supported: &[&str], ignored: &[&str]) -> Res<()> {
        for (k, n) in self.entries()? {
            if supported.contains(&k.as_str()) || ignored.contains(&k.as_str()) {
                continue;
            }
            return refuse(
                &n.path,
                format!(
                    "not supported by lampyr: {}; the fields lampyr reads here are {}",
                    hint(&k),
                    supported.join(", ")
                ),
            );
        }
        Ok(())
    }
}

/// What to do about a field lampyr does not support, for the common ones.
fn hint(key: &str) -> &'static str {
    match key {
        "VpcConfig" | "vpcConfig" | "VpcBinding" | "vpcBinding" => {
            "lampyr runs functions on its own host; let one reach a private network with `network` and `allow` in lampyr.toml, and remove this"
        }
        "Policies" | "Role" | "role" | "PermissionsBoundary" => {
            "lampyr has no IAM roles; remove it and pass the credentials the code needs in its environment variables"
        }
        "Layers" | "layers" => "put the layer's files in the code directory instead, and remove it",
        "initializer" | "initializationTimeout" => {
            "Serverless Devs 3 names the initializer under instanceLifecycleConfig.initializer (handler, timeout); move it there"
        }
        "preStop" | "preFreeze" => {
            "lampyr has no pre-stop or pre-freeze hook; remove it"
        }
        "NasConfig" | "nasConfig" | "ossMountConfig" | "EphemeralStorage" | "FileSystemConfigs" => {
            "lampyr mounts no network file systems; remove it"
        }
        "actions" => {
            "lampyr ships the code directory as it is: run the build steps yourself before `lampyr deploy`, and remove it"
        }
        "InlineCode" => "put the code in a file in a directory and name it in CodeUri",
        "Condition" | "Conditions" => "lampyr deploys every function of the template as written; remove the condition",
        "customContainerConfig" | "ImageUri" | "ImageConfig" => {
            "lampyr runs code from a directory, not container images"
        }
        _ => "remove it, or write a lampyr.toml for the function by hand (see the README's manifest section)",
    }
}

/// Resolves the references in `v` (at `path`): the whole value, or, for
/// strings in Serverless Devs, the `${...}` inside.
fn resolve(v: &Value, path: &str, scope: &Scope) -> Res<Value> {
    match scope.dialect {
        Dialect::Intrinsics { pseudo } => {
            if let Some((name, arg)) = intrinsic(v) {
                return match name.as_str() {
                    "Ref" => reference(&arg, path, scope, pseudo),
                    "Sub" => sub(&arg, path, scope, pseudo),
                    other => refuse(
                        path,
                        format!("!{other} is not supported by lampyr (it resolves !Ref and !Sub of parameters with a Default): write the value itself"),
                    ),
                };
            }
            Ok(v.clone())
        }
        Dialect::Devs => match v {
            Value::String(s) => devs_vars(s, path, scope),
            _ => Ok(v.clone()),
        },
    }
}

/// An intrinsic function: `!Name arg`, or `{Ref: arg}` / `{"Fn::Name": arg}`.
fn intrinsic(v: &Value) -> Option<(String, Value)> {
    match v {
        Value::Tagged(t) => Some((
            t.tag.to_string().trim_start_matches('!').to_string(),
            t.value.clone(),
        )),
        Value::Mapping(m) if m.len() == 1 => {
            let (k, arg) = m.iter().next()?;
            let k = k.as_str()?;
            if k == "Ref" {
                Some(("Ref".into(), arg.clone()))
            } else {
                k.strip_prefix("Fn::").map(|f| (f.to_string(), arg.clone()))
            }
        }
        _ => None,
    }
}

/// The value a parameter reference stands for: its default.
fn parameter(name: &str, path: &str, scope: &Scope, pseudo: &str) -> Res<Value> {
    if name.starts_with(pseudo) {
        return refuse(
            path,
            format!("refers to {name}, a pseudo parameter of the cloud, which lampyr does not have: write the value itself"),
        );
    }
    match scope.params.get(name) {
        Some(Some(d)) => Ok(d.clone()),
        Some(None) => refuse(
            path,
            format!("refers to parameter {name}, which has no Default: give it one in Parameters.{name}.Default (lampyr deploys with the defaults)"),
        ),
        None if scope.resources.iter().any(|r| r == name || name.starts_with(&format!("{r}."))) => refuse(
            path,
            format!("refers to resource {name}, which lampyr does not deploy: write the value itself"),
        ),
        None => refuse(
            path,
            format!("refers to {name}, which is not a parameter of this template"),
        ),
    }
}

fn reference(arg: &Value, path: &str, scope: &Scope, pseudo: &str) -> Res<Value> {
    match arg {
        Value::String(name) => parameter(name, path, scope, pseudo),
        _ => refuse(path, "!Ref takes the name of a parameter"),
    }
}

/// `!Sub "text ${Param} ${!Literal}"`, or `!Sub [text, {Var: value}]`.
fn sub(arg: &Value, path: &str, scope: &Scope, pseudo: &str) -> Res<Value> {
    let (text, vars) = match arg {
        Value::String(s) => (s.clone(), None),
        Value::Sequence(s) if s.len() == 2 => match (&s[0], &s[1]) {
            (Value::String(t), Value::Mapping(m)) => (t.clone(), Some(m.clone())),
            _ => return refuse(path, "!Sub takes a string, or a list of a string and a map"),
        },
        _ => return refuse(path, "!Sub takes a string, or a list of a string and a map"),
    };
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return refuse(path, format!("!Sub \"{text}\" has a ${{ without its }}"));
        };
        let name = &after[..end];
        if let Some(lit) = name.strip_prefix('!') {
            out.push_str(&format!("${{{lit}}}"));
        } else {
            let local = vars
                .as_ref()
                .and_then(|m| m.get(name))
                .map(|v| resolve(v, path, scope))
                .transpose()?;
            let v = match local {
                Some(v) => v,
                None => parameter(name, path, scope, pseudo)?,
            };
            out.push_str(&scalar_text(&v).ok_or_else(|| Refusal {
                path: path.to_string(),
                message: format!("!Sub: ${{{name}}} is not a string or number"),
            })?);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Serverless Devs' `${vars.a.b}` (a string that is only that takes the
/// variable's value, whatever its type) and `${env(NAME)}` (from the
/// environment `lampyr deploy` runs in).
fn devs_vars(s: &str, path: &str, scope: &Scope) -> Res<Value> {
    if !s.contains("${") {
        return Ok(Value::String(s.to_string()));
    }
    let lookup = |expr: &str| -> Res<Value> {
        let expr = expr.trim();
        if let Some(var) = expr.strip_prefix("vars.") {
            let mut v = &scope.vars;
            for part in var.split('.') {
                v = match v.get(part) {
                    Some(x) => x,
                    None => {
                        return refuse(
                            path,
                            format!(
                            "refers to ${{vars.{var}}}, which the template's vars do not define"
                        ),
                        )
                    }
                };
            }
            // A variable may itself refer to the environment.
            return resolve(v, path, scope);
        }
        if let Some(arg) = expr.strip_prefix("env(").and_then(|a| a.strip_suffix(')')) {
            let name = arg.trim().trim_matches(|c| c == '\'' || c == '"');
            return std::env::var(name).map(Value::String).map_err(|_| Refusal {
                path: path.to_string(),
                message: format!("refers to ${{env({name})}}, and {name} is not set: set it in the environment of `lampyr deploy`"),
            });
        }
        refuse(
            path,
            format!("${{{expr}}} is not supported by lampyr (it resolves ${{vars.NAME}} and ${{env(NAME)}}): write the value itself"),
        )
    };
    let trimmed = s.trim();
    if trimmed.starts_with("${")
        && trimmed.ends_with('}')
        && trimmed[2..].find('}') == Some(trimmed.len() - 3)
    {
        return lookup(&trimmed[2..trimmed.len() - 1]);
    }
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return refuse(path, format!("\"{s}\" has a ${{ without its }}"));
        };
        let v = lookup(&after[..end])?;
        out.push_str(&scalar_text(&v).ok_or_else(|| Refusal {
            path: path.to_string(),
            message: format!(
                "${{{}}} is not a string or number, so it cannot be part of a string",
                &after[..end]
            ),
        })?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(text: &str, dialect: Dialect, params: &[(&str, Option<&str>)]) -> Node {
        let v: Value = serde_yaml_ng::from_str(text).unwrap();
        Node::root(
            v,
            Scope {
                dialect,
                params: params
                    .iter()
                    .map(|(k, d)| (k.to_string(), d.map(|d| Value::String(d.into()))))
                    .collect(),
                resources: vec!["Table".into()],
                vars: serde_yaml_ng::from_str("region: cn-hangzhou\nenv: {A: '1'}\n").unwrap(),
            },
        )
    }

    const CFN: Dialect = Dialect::Intrinsics { pseudo: "AWS::" };

    #[test]
    fn refs_and_subs_resolve_to_parameter_defaults() {
        let n = node(
            "a: !Ref Stage\nb: {Ref: Stage}\nc: !Sub 'app-${Stage}-${!Literal}'\nd: {'Fn::Sub': ['${X}/${Stage}', {X: x}]}\n",
            CFN,
            &[("Stage", Some("dev"))],
        );
        let get = |k: &str| n.get(k).unwrap().unwrap().text().unwrap();
        assert_eq!(get("a"), "dev");
        assert_eq!(get("b"), "dev");
        assert_eq!(get("c"), "app-dev-${Literal}");
        assert_eq!(get("d"), "x/dev");
    }

    #[test]
    fn other_intrinsics_and_references_are_refused_with_their_path() {
        let n = node(
            "env:\n  A: !GetAtt Table.Arn\n  B: !Ref AWS::Region\n  C: !Ref Table\n  D: !Ref NoDefault\n  E: !Sub '${Missing}'\n  F: {'Fn::Join': ['', [a]]}\n",
            CFN,
            &[("NoDefault", None)],
        );
        let env = n.get("env").unwrap().unwrap();
        for (k, want) in [
            ("A", "!GetAtt is not supported"),
            ("B", "pseudo parameter"),
            ("C", "resource Table"),
            ("D", "Parameters.NoDefault.Default"),
            ("E", "Missing, which is not a parameter"),
            ("F", "!Join is not supported"),
        ] {
            let e = env.get(k).unwrap().unwrap().text().unwrap_err();
            assert_eq!(e.path, format!("env.{k}"));
            assert!(e.message.contains(want), "{k}: {}", e.message);
        }
    }

    #[test]
    fn devs_vars_resolve_whole_or_inside_strings() {
        let n = node(
            "a: ${vars.region}\nb: 'fc-${vars.region}-x'\nc: ${vars.env}\nd: ${vars.nope}\ne: ${config('AccountID')}\n",
            Dialect::Devs,
            &[],
        );
        assert_eq!(n.get("a").unwrap().unwrap().text().unwrap(), "cn-hangzhou");
        assert_eq!(
            n.get("b").unwrap().unwrap().text().unwrap(),
            "fc-cn-hangzhou-x"
        );
        let c = n.get("c").unwrap().unwrap().entries().unwrap();
        assert_eq!((c[0].0.as_str(), c[0].1.text().unwrap()), ("A", "1".into()));
        assert!(n
            .get("d")
            .unwrap()
            .unwrap()
            .text()
            .unwrap_err()
            .message
            .contains("vars.nope"));
        assert!(n
            .get("e")
            .unwrap()
            .unwrap()
            .text()
            .unwrap_err()
            .message
            .contains("config('AccountID')"));
    }

    #[test]
    fn unknown_keys_are_named_with_their_path_and_a_hint() {
        let n = node("Props:\n  Handler: x\n  VpcConfig: {}\n", CFN, &[]);
        let p = n.get("Props").unwrap().unwrap();
        let e = p.check_keys(&["Handler"], &[]).unwrap_err();
        assert_eq!(e.path, "Props.VpcConfig");
        assert!(
            e.message.contains("not supported by lampyr") && e.message.contains("`network`"),
            "{}",
            e.message
        );
        assert!(p.check_keys(&["Handler"], &["VpcConfig"]).is_ok());
    }
}
