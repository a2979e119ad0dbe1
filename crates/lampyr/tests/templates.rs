//! `lampyr deploy TEMPLATE` on the real server: a Node.js and a Python
//! function from each of AWS SAM's template.yaml, Function Compute's
//! template.yml and Serverless Devs' s.yaml deploy from their code
//! directories, answer on their URLs, and their schedules are timers (one
//! fires; the minute-long ones are checked by their next firings); the
//! manifest `--dry-run` prints deploys on its own; a Function Compute HTTP
//! event makes an HTTP function with its initializer; a field lampyr lacks
//! is refused by its path.

mod common;

use std::time::{Duration, SystemTime};

use common::{installed, Server};
use serde_json::Value;

/// A project directory: (path, content) pairs.
fn project(files: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (f, body) in files {
        let p = dir.path().join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    dir
}

/// Runs the CLI; panics with its output unless it succeeds.
fn cli_ok(server: &Server, args: &[&str]) -> String {
    let out = server.cli(args);
    assert!(
        out.status.success(),
        "lampyr {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A timer's next firings are `period` apart.
fn assert_every(info: &Value, timer: &str, cron: &str, period: u64) {
    let t = info["timers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == timer)
        .unwrap_or_else(|| panic!("no timer {timer}: {info}"));
    assert_eq!(t["cron"], cron, "{t}");
    assert_eq!(t["enabled"], true, "{t}");
    let next: Vec<SystemTime> = t["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| humantime::parse_rfc3339(n.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(next.len(), 3, "{t}");
    for w in next.windows(2) {
        assert_eq!(
            w[1].duration_since(w[0]).unwrap(),
            Duration::from_secs(period),
            "{t}"
        );
    }
}

const NODE_HTTP: &str = r#"
export const lambdaHandler = async (event) => ({
  statusCode: 200,
  headers: { "content-type": "application/json" },
  body: JSON.stringify({ greeting: process.env.GREETING, path: event.rawPath }),
});
"#;

const PYTHON_HTTP: &str = r#"
import json, os

def lambda_handler(event, context):
    return {"statusCode": 200, "body": json.dumps({"runtime": "python", "stage": os.environ.get("STAGE"), "path": event["rawPath"]})}
"#;

#[test]
fn sam_template_deploys_node_and_python_functions() {
    let server = Server::start();
    let (node, python) = installed(&server);
    let template = format!(
        r#"AWSTemplateFormatVersion: '2010-09-09'
Transform: AWS::Serverless-2016-10-31
Description: sam-app
Parameters:
  Stage: {{Type: String, Default: test}}
Globals:
  Function:
    Timeout: 5
    Environment:
      Variables: {{STAGE: !Ref Stage}}
Resources:
  HelloWorldFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: hello-world/
      Handler: app.lambdaHandler
      Runtime: nodejs{node}.x
      Environment:
        Variables: {{GREETING: hello from sam}}
      Events:
        HelloWorld:
          Type: Api
          Properties: {{Path: /hello, Method: get}}
        Report:
          Type: Schedule
          Properties: {{Schedule: rate(1 minute), Input: '{{"job": "report"}}'}}
  PythonFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: hello_world
      Handler: app.lambda_handler
      Runtime: python{python}
      Events:
        Api: {{Type: HttpApi}}
Outputs:
  HelloWorldFunction:
    Value: !GetAtt HelloWorldFunction.Arn
"#
    );
    let dir = project(&[
        ("template.yaml", template),
        ("hello-world/app.mjs", NODE_HTTP.to_string()),
        ("hello_world/app.py", PYTHON_HTTP.to_string()),
    ]);
    let t = dir.path().join("template.yaml");
    let out = cli_ok(&server, &["deploy", t.to_str().unwrap()]);
    assert!(
        out.contains("hello-world-function deployed version 1"),
        "{out}"
    );
    assert!(out.contains("python-function deployed version 1"), "{out}");

    let r = server.get("hello-world-function/hello");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["greeting"], "hello from sam");
    assert_eq!(v["path"], "/hello");
    let r = server.get("python-function/items");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stage"], "test", "Globals and !Ref");
    assert_eq!(r.json()["path"], "/items");

    // rate(1 minute) is a timer firing every minute.
    let info = server.info("hello-world-function");
    assert_every(&info, "report", "@every 1m", 60);
    assert_eq!(info["spec"]["timeout_ms"], 5000);
    assert!(
        server.info("python-function")["timers"]
            .as_array()
            .is_none_or(|t| t.is_empty()),
        "no schedule, no timer"
    );

    // The manifest --dry-run prints is a lampyr.toml: saved beside the
    // code, the directory deploys without the template...
    let toml = cli_ok(
        &server,
        &[
            "deploy",
            t.to_str().unwrap(),
            "--function",
            "PythonFunction",
            "--dry-run",
        ],
    );
    let spec = lampyr_api::FunctionSpec::from_toml(&toml).unwrap();
    assert_eq!(spec.name, "python-function");
    std::fs::write(dir.path().join("hello_world/lampyr.toml"), &toml).unwrap();
    let code = dir.path().join("hello_world");
    let out = cli_ok(&server, &["deploy", code.to_str().unwrap()]);
    assert!(out.contains("python-function deployed version 2"), "{out}");
    assert_eq!(server.get("python-function").json()["stage"], "test");
    // ...and the template no longer deploys it over its own manifest.
    let out = server.cli(&[
        "deploy",
        t.to_str().unwrap(),
        "--function",
        "python-function",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has a lampyr.toml of its own"), "{err}");
}

#[test]
fn function_compute_template_deploys_functions_with_timers() {
    let server = Server::start();
    let (node, python) = installed(&server);
    let template = format!(
        r#"ROSTemplateFormatVersion: '2015-09-01'
Transform: 'Aliyun::Serverless-2018-04-03'
Resources:
  GreetingService:
    Type: 'Aliyun::Serverless::Service'
    Properties:
      Description: 'hello world'
    GreetingFunction:
      Type: 'Aliyun::Serverless::Function'
      Properties:
        Handler: index.handler
        Runtime: nodejs{node}
        CodeUri: './node'
        MemorySize: 128
        Timeout: 60
        EnvironmentVariables: {{KEY: value}}
      Events:
        tick:
          Type: Timer
          Properties: {{CronExpression: '@every 1s', Enable: true, Payload: 'awesome-fc'}}
    PyFunction:
      Type: 'Aliyun::Serverless::Function'
      Properties:
        Handler: index.handler
        Runtime: python{python}
        CodeUri: './py'
      Events:
        daily:
          Type: Timer
          Properties: {{CronExpression: 'CRON_TZ=Asia/Shanghai 0 0 8 * * *'}}
"#
    );
    let dir = project(&[
        ("template.yml", template.clone()),
        (
            "node/index.js",
            "exports.handler = (event, context, callback) => { console.log('TICK ' + JSON.stringify(event)); callback(null, process.env.KEY); };\n".into(),
        ),
        (
            "py/index.py",
            "def handler(event, context):\n    return 'hello from fc python'\n".into(),
        ),
    ]);
    let t = dir.path().join("template.yml");
    let out = cli_ok(&server, &["deploy", t.to_str().unwrap()]);
    assert!(
        out.contains("greeting-function deployed version 1"),
        "{out}"
    );
    assert!(out.contains("py-function deployed version 1"), "{out}");
    // No HTTP trigger: called with `lampyr invoke`.
    assert_eq!(
        cli_ok(&server, &["invoke", "greeting-function"]).trim(),
        "\"value\""
    );
    assert_eq!(
        cli_ok(&server, &["invoke", "py-function"]).trim(),
        "\"hello from fc python\""
    );
    assert_eq!(server.get("greeting-function").status, 404);
    // The one-second timer fires with its payload.
    server.wait_until("the timer fired", Duration::from_secs(20), || {
        server.logs("greeting-function", "").iter().any(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("TICK ") && m.contains("\"payload\":\"awesome-fc\""))
        })
    });
    let info = server.info("py-function");
    let daily = &info["timers"][0];
    assert_eq!(
        (daily["cron"].as_str(), daily["timezone"].as_str()),
        (Some("0 0 8 * * *"), Some("Asia/Shanghai"))
    );
    assert_every(&info, "daily", "0 0 8 * * *", 24 * 3600);

    // An HTTP event makes an FC HTTP function (req, resp, context) with its
    // URL; its initializer runs once, before the first request.
    let web = r#"ROSTemplateFormatVersion: '2015-09-01'
Transform: 'Aliyun::Serverless-2018-04-03'
Resources:
  WebService:
    Type: 'Aliyun::Serverless::Service'
    WebFunction:
      Type: 'Aliyun::Serverless::Function'
      Properties:
        Handler: index.handler
        Initializer: index.init
        InitializationTimeout: 5
        Runtime: nodejs20
        CodeUri: './'
      Events:
        web:
          Type: HTTP
          Properties: {AuthType: ANONYMOUS, Methods: ['GET', 'POST']}
"#
    .replace("nodejs20", &format!("nodejs{node}"));
    let web_dir = project(&[
        ("template.yml", web),
        (
            "index.js",
            "let inits = 0;\nexports.init = (context, callback) => { inits += 1; callback(null, ''); };\nexports.handler = (req, resp, context) => { resp.setStatusCode(201); resp.setHeader('x-path', req.path); resp.send(`inits=${inits} ${req.method}`); };\n".into(),
        ),
    ]);
    let wt = web_dir.path().join("template.yml");
    let dry = cli_ok(&server, &["deploy", wt.to_str().unwrap(), "--dry-run"]);
    assert!(
        dry.contains("handler_type = \"http\"") && dry.contains("initializer = \"index.init\""),
        "{dry}"
    );
    cli_ok(&server, &["deploy", wt.to_str().unwrap()]);
    for _ in 0..2 {
        let r = server.call("POST", "web-function/x/y", Some(b"{}"));
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.header("x-path"), Some("/x/y"));
        assert_eq!(r.text(), "inits=1 POST");
    }
}

#[test]
fn serverless_devs_s_yaml_deploys_http_and_timer_triggers() {
    let server = Server::start();
    let (node, python) = installed(&server);
    let s = format!(
        r#"edition: 3.0.0
name: hello-world-app
access: "default"
vars:
  region: "cn-hangzhou"
  stage: "test"
resources:
  hello_world:
    component: fc3
    props:
      region: ${{vars.region}}
      functionName: "start-nodejs-s1mr"
      description: 'hello world by serverless devs'
      runtime: "nodejs{node}"
      code: ./code
      handler: index.handler
      memorySize: 128
      timeout: 30
      environmentVariables:
        STAGE: ${{vars.stage}}
      triggers:
        - triggerName: httpTrigger
          triggerType: http
          triggerConfig:
            authType: anonymous
            methods: [GET, POST]
        - triggerName: timerTrigger
          triggerType: timer
          triggerConfig:
            cronExpression: '@every 5m'
            enable: true
            payload: 'hello'
  python_app:
    component: fc3
    props:
      region: ${{vars.region}}
      functionName: "start-python"
      runtime: "python{python}"
      code: ./python
      handler: index.handler
      triggers:
        - triggerName: httpTrigger
          triggerType: http
          triggerConfig: {{authType: anonymous, methods: [GET]}}
"#
    );
    let dir = project(&[
        ("s.yaml", s),
        (
            "code/index.js",
            "exports.handler = async (event) => 'hello world from ' + process.env.STAGE + ' ' + event.requestContext.http.method;\n".into(),
        ),
        (
            "python/index.py",
            "def handler(event, context):\n    return {'statusCode': 201, 'body': 'python ' + event['rawPath']}\n".into(),
        ),
    ]);
    let t = dir.path().join("s.yaml");
    // One function at a time, by either name.
    cli_ok(
        &server,
        &["deploy", t.to_str().unwrap(), "--function", "hello_world"],
    );
    assert_eq!(
        server.api("GET", "/functions/start-python", None).status,
        404
    );
    cli_ok(
        &server,
        &["deploy", t.to_str().unwrap(), "--function", "start-python"],
    );

    let r = server.call("POST", "start-nodejs-s1mr", Some(b"{}"));
    assert_eq!(
        (r.status, r.text()),
        (200, "hello world from test POST".to_string())
    );
    let r = server.get("start-python/x");
    assert_eq!((r.status, r.text()), (201, "python /x".to_string()));
    assert_every(
        &server.info("start-nodejs-s1mr"),
        "timer-trigger",
        "@every 5m",
        300,
    );

    // An unknown function is refused naming the ones there are.
    let out = server.cli(&["deploy", t.to_str().unwrap(), "--function", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("start-nodejs-s1mr (hello_world), start-python (python_app)"),
        "{err}"
    );
}
