//! The templates the tools generate (`sam init`, `s init`, `fun init`),
//! imported whole, and refusals that name their field.

use super::*;
use lampyr_api::manifest::TriggerSpec;

/// The hello-world `sam init` writes (Node.js 20, an Api event).
const SAM_HELLO: &str = include_str!("../fixtures/sam-template.yaml");

/// The template.yml `fun init` writes for a timer function, with the
/// reference's service.
const FC_HELLO: &str = include_str!("../fixtures/fc-template.yml");

/// The s.yaml `s init start-fc3-nodejs` writes, its triggers uncommented.
const S_YAML: &str = include_str!("../fixtures/fc3-s.yaml");

struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(code_dirs: &[&str]) -> Project {
        let dir = tempfile::tempdir().unwrap();
        for d in code_dirs {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Project { dir }
    }

    fn import(&self, file: &str, text: &str) -> Result<Template, ImportError> {
        let path = self.dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        read(&path)
    }
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        a => a,
    }
}

fn refusal(r: Result<Template, ImportError>) -> (String, String) {
    match r {
        Err(ImportError::Refused { field, message, .. }) => (field, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn sam_hello_world_imports_as_is() {
    let p = Project::new(&["hello-world"]);
    let t = p
        .import("template.yaml", &SAM_HELLO.replace("ARCH", host_arch()))
        .unwrap();
    assert_eq!(t.format, Format::Sam);
    let [f] = &t.functions[..] else {
        panic!("{:?}", t.functions)
    };
    assert_eq!(
        (f.id.as_str(), f.name.as_str()),
        ("HelloWorldFunction", "hello-world-function")
    );
    assert_eq!(f.at, "Resources.HelloWorldFunction");
    assert_eq!(f.code_dir, p.dir.path().join("hello-world"));
    assert_eq!(f.spec.handler, "app.lambdaHandler");
    assert_eq!(f.spec.runtime_version.as_deref(), Some("20"));
    assert_eq!(f.spec.timeout_ms, 3000, "Globals.Function.Timeout");
    assert!(f.spec.has_http_trigger());
    assert!(
        f.notes.iter().any(|n| n.contains("payload format 1.0")),
        "{:?}",
        f.notes
    );
    // The manifest is what `lampyr deploy` of a directory reads.
    assert_eq!(FunctionSpec::from_toml(&f.manifest).unwrap(), f.spec);
    assert!(
        f.manifest.starts_with("name = \"hello-world-function\"\nruntime = \"nodejs20.x\"\nhandler = \"app.lambdaHandler\"\ntimeout = \"3s\"\n"),
        "{}",
        f.manifest
    );
}

#[test]
fn sam_properties_globals_parameters_and_schedules_map() {
    let p = Project::new(&["src/api", "src/jobs"]);
    let t = p
        .import(
            "template.yaml",
            r#"AWSTemplateFormatVersion: '2010-09-09'
Transform: [AWS::Serverless-2016-10-31]
Parameters:
  Stage: {Type: String, Default: dev}
  Memory: {Type: Number, Default: 256}
Globals:
  Function:
    Runtime: python3.11
    MemorySize: !Ref Memory
    Environment:
      Variables: {STAGE: !Ref Stage, SHARED: global}
Resources:
  Api:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: !Sub 'orders-${Stage}'
      CodeUri: src/api
      Handler: app.handler
      Timeout: 30
      ReservedConcurrentExecutions: 5
      ProvisionedConcurrencyConfig: {ProvisionedConcurrentExecutions: 1}
      AutoPublishAlias: live
      Environment:
        Variables: {SHARED: own, PORT: 8080}
      Events:
        Root: {Type: HttpApi}
        Items: {Type: HttpApi, Properties: {Path: /items, Method: GET, PayloadFormatVersion: '2.0'}}
  Nightly:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/jobs
      Handler: job.run
      Tags: {team: x}
      EventInvokeConfig: {MaximumRetryAttempts: 0, MaximumEventAgeInSeconds: 600}
      Events:
        Every:
          Type: Schedule
          Properties: {Schedule: rate(1 minute), Input: '{"job": "report"}'}
        Weekdays:
          Type: ScheduleV2
          Properties: {ScheduleExpression: 'cron(0 8 ? * 2-6 *)', ScheduleExpressionTimezone: Europe/Berlin, State: DISABLED, Name: morning}
"#,
        )
        .unwrap();
    let [api, job] = &t.functions[..] else {
        panic!()
    };
    assert_eq!(api.name, "orders-dev");
    assert_eq!(api.spec.memory_mb, 256);
    assert_eq!((api.spec.min_instances, api.spec.max_instances), (1, 5));
    assert_eq!(api.alias.as_deref(), Some("live"));
    assert_eq!(api.spec.env["STAGE"], "dev");
    assert_eq!(api.spec.env["SHARED"], "own");
    assert_eq!(api.spec.env["PORT"], "8080");
    assert_eq!(api.spec.triggers.len(), 1, "two HTTP events are one URL");
    assert_eq!(job.name, "nightly");
    assert_eq!(job.spec.retries, 0);
    assert_eq!(job.spec.max_event_age_ms, 600_000);
    assert!(!job.spec.has_http_trigger());
    let timers: Vec<_> = job.spec.timers().collect();
    assert_eq!(
        (timers[0].name.as_str(), timers[0].cron.as_str()),
        ("every", "@every 1m")
    );
    assert_eq!(timers[0].payload.as_deref(), Some(r#"{"job": "report"}"#));
    assert_eq!(
        (
            timers[1].name.as_str(),
            timers[1].cron.as_str(),
            timers[1].timezone.as_str(),
            timers[1].enabled
        ),
        ("morning", "0 8 * * 1-5", "Europe/Berlin", false)
    );
    // One function picked by either name.
    assert_eq!(
        t.clone().select(Some("Nightly")).unwrap()[0].name,
        "nightly"
    );
    assert_eq!(t.clone().select(Some("orders-dev")).unwrap().len(), 1);
    let e = t.select(Some("nope")).unwrap_err().to_string();
    assert!(e.contains("orders-dev (Api), nightly (Nightly)"), "{e}");
}

#[test]
fn sam_fields_lampyr_lacks_are_refused_by_path() {
    let p = Project::new(&["src"]);
    let base = "AWSTemplateFormatVersion: '2010-09-09'\nTransform: AWS::Serverless-2016-10-31\nResources:\n  Fn:\n    Type: AWS::Serverless::Function\n    Properties:\n      CodeUri: src\n      Handler: app.handler\n      Runtime: nodejs20.x\n";
    for (extra, field, want) in [
        ("      VpcConfig: {SubnetIds: [a]}\n", "Resources.Fn.Properties.VpcConfig", "not supported by lampyr"),
        ("      Policies: [AWSLambdaBasicExecutionRole]\n", "Resources.Fn.Properties.Policies", "IAM"),
        ("      Events:\n        Q: {Type: SQS, Properties: {Queue: x}}\n", "Resources.Fn.Properties.Events.Q.Type", "SQS"),
        ("      Events:\n        H: {Type: HttpApi, Properties: {Auth: {}}}\n", "Resources.Fn.Properties.Events.H.Properties.Auth", "not supported"),
        ("      Events:\n        S: {Type: Schedule, Properties: {Schedule: 'cron(0 8 * * ? 2031)'}}\n", "Resources.Fn.Properties.Events.S.Properties.Schedule", "year"),
        ("      Environment:\n        Variables: {T: !GetAtt Table.Arn}\n", "Resources.Fn.Properties.Environment.Variables.T", "!GetAtt"),
        ("      MemorySize: 5\n", "Resources.Fn.Properties.MemorySize", "`memory_mb`"),
        ("      Architectures: [sparc]\n", "Resources.Fn.Properties.Architectures[0]", "sparc"),
        ("  Table:\n    Type: AWS::DynamoDB::Table\n", "Resources.Table.Type", "functions (AWS::Serverless::Function) only"),
    ] {
        let (f, m) = refusal(p.import("template.yaml", &format!("{base}{extra}")));
        assert_eq!(f, field, "{extra}: {m}");
        assert!(m.contains(want), "{extra}: {m}");
    }
    // The code directory must be there, and the runtime known.
    let (f, m) = refusal(p.import(
        "template.yaml",
        &base.replace("CodeUri: src", "CodeUri: build"),
    ));
    assert_eq!(f, "Resources.Fn.Properties.CodeUri");
    assert!(m.contains("does not exist"), "{m}");
    let (f, m) = refusal(p.import("template.yaml", &base.replace("nodejs20.x", "java21")));
    assert_eq!(f, "Resources.Fn.Properties.Runtime");
    assert!(m.contains("java21"), "{m}");
    // Errors carry the file's name.
    let e = p
        .import("template.yaml", &format!("{base}      Layers: [x]\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("template.yaml: Resources.Fn.Properties.Layers: not supported by lampyr"),
        "{e}"
    );
}

#[test]
fn function_compute_template_imports_timers_http_functions_and_initializers() {
    let p = Project::new(&[]);
    let t = p.import("template.yml", FC_HELLO).unwrap();
    assert_eq!(t.format, Format::FunctionCompute);
    let [f] = &t.functions[..] else { panic!() };
    assert_eq!(f.name, "greeting-function");
    assert_eq!(f.at, "Resources.GreetingService.GreetingFunction");
    assert_eq!(f.code_dir, p.dir.path());
    assert_eq!(
        (f.spec.memory_mb, f.spec.timeout_ms, f.spec.concurrency),
        (128, 60_000, 1)
    );
    assert_eq!(f.spec.env["KEY"], "value");
    let timer = f.spec.timers().next().unwrap();
    assert_eq!(
        (timer.name.as_str(), timer.cron.as_str()),
        ("timer-trigger", "0 0 8 * * *")
    );
    assert_eq!(timer.payload.as_deref(), Some("awesome-fc"));
    assert!(!f.spec.has_http_trigger());
    // The reference's HTTP trigger: an HTTP function with its URL, and an
    // initializer.
    let events = FC_HELLO.find("      Events:").unwrap();
    let http = format!(
        "{}      Events:\n        httpTrigger:\n          Type: HTTP\n          Properties: {{AuthType: FUNCTION, Methods: ['GET', 'POST']}}\n",
        FC_HELLO[..events].replace(
            "        InstanceConcurrency: 1\n",
            "        InstanceConcurrency: 1\n        Initializer: index.init\n        InitializationTimeout: 5\n",
        )
    );
    let f = p.import("template.yml", &http).unwrap().functions.remove(0);
    assert!(f.spec.has_http_trigger());
    assert_eq!(f.spec.handler_type, lampyr_api::manifest::HandlerType::Http);
    assert_eq!(f.spec.initializer.as_deref(), Some("index.init"));
    assert_eq!(f.spec.initialization_timeout_ms, 5_000);
    assert!(
        f.manifest.contains("handler_type = \"http\""),
        "{}",
        f.manifest
    );
    assert!(f.manifest.contains("auth = \"token\""), "{}", f.manifest);
    for (from, to, field) in [
        ("      Description: 'hello world'\n", "      VpcConfig: {}\n", "Resources.GreetingService.Properties.VpcConfig"),
        ("Type: Timer", "Type: OSS", "Resources.GreetingService.GreetingFunction.Events.timerTrigger.Type"),
        ("'0 0 8 * * *'", "'0 0 8 * * 1-5'", "Resources.GreetingService.GreetingFunction.Events.timerTrigger.Properties.CronExpression"),
    ] {
        let (f, m) = refusal(p.import("template.yml", &FC_HELLO.replace(from, to)));
        assert_eq!(f, field, "{to}: {m}");
    }
}

#[test]
fn serverless_devs_initializer_comes_from_the_instance_lifecycle() {
    let p = Project::new(&["code"]);
    let yaml = S_YAML.replace(
        "      timeout: 30\n",
        "      timeout: 30\n      instanceLifecycleConfig:\n        initializer: {handler: index.init, timeout: 7}\n",
    );
    let f = p.import("s.yaml", &yaml).unwrap().functions.remove(0);
    assert_eq!(f.spec.initializer.as_deref(), Some("index.init"));
    assert_eq!(f.spec.initialization_timeout_ms, 7_000);
    let hooks = S_YAML.replace(
        "      timeout: 30\n",
        "      timeout: 30\n      instanceLifecycleConfig:\n        preStop: {handler: index.stop}\n",
    );
    let (field, _) = refusal(p.import("s.yaml", &hooks));
    assert_eq!(
        field,
        "resources.hello_world.props.instanceLifecycleConfig.preStop"
    );
}

#[test]
fn serverless_devs_s_yaml_imports_with_vars() {
    let p = Project::new(&["code"]);
    let t = p.import("s.yaml", S_YAML).unwrap();
    assert_eq!(t.format, Format::ServerlessDevs);
    let [f] = &t.functions[..] else { panic!() };
    assert_eq!(
        (f.id.as_str(), f.name.as_str()),
        ("hello_world", "start-nodejs-s1mr")
    );
    assert_eq!(f.at, "resources.hello_world");
    assert_eq!(f.code_dir, p.dir.path().join("code"));
    assert_eq!(f.spec.env["REGION"], "cn-hangzhou");
    assert_eq!(f.spec.timeout_ms, 30_000);
    assert!(f.spec.has_http_trigger());
    let timer = f.spec.timers().next().unwrap();
    assert_eq!(
        (
            timer.name.as_str(),
            timer.cron.as_str(),
            timer.payload.as_deref()
        ),
        ("timer-trigger", "@every 5m", Some("hello"))
    );
    assert!(matches!(f.spec.triggers[0], TriggerSpec::Http(_)));
    assert!(
        f.notes.iter().any(|n| n.contains("logConfig")),
        "{:?}",
        f.notes
    );
    for (from, to, field, want) in [
        (
            "      timeout: 30\n",
            "      timeout: 30\n      vpcConfig: auto\n",
            "resources.hello_world.props.vpcConfig",
            "not supported",
        ),
        (
            "      timeout: 30\n",
            "      timeout: 30\n      initializer: index.init\n",
            "resources.hello_world.props.initializer",
            "instanceLifecycleConfig",
        ),
        (
            "    component: fc3\n",
            "    component: fc3\n    actions: {pre-deploy: [{run: npm i}]}\n",
            "resources.hello_world.actions",
            "build steps",
        ),
        (
            "component: fc3",
            "component: fc3-domain",
            "resources.hello_world.component",
            "fc3 functions only",
        ),
        (
            "REGION: ${vars.region}",
            "REGION: ${vars.zone}",
            "resources.hello_world.props.environmentVariables.REGION",
            "vars.zone",
        ),
        (
            "triggerType: timer",
            "triggerType: oss",
            "resources.hello_world.props.triggers[1].triggerType",
            "oss",
        ),
        (
            "authType: anonymous",
            "authType: jwt",
            "resources.hello_world.props.triggers[0].triggerConfig.authType",
            "jwt",
        ),
        (
            "code: ./code",
            "code: {ossBucketName: b, ossObjectName: o}",
            "resources.hello_world.props.code",
            "bucket",
        ),
    ] {
        let (f, m) = refusal(p.import("s.yaml", &S_YAML.replace(from, to)));
        assert_eq!(f, field, "{to}: {m}");
        assert!(m.contains(want), "{to}: {m}");
    }
}

#[test]
fn files_that_are_not_templates_say_what_lampyr_reads() {
    let p = Project::new(&[]);
    for text in [
        "just: a map\n",
        "- a list\n",
        "AWSTemplateFormatVersion: '2010-09-09'\nResources: {}\n",
        ": not yaml: [",
    ] {
        let e = p.import("x.yaml", text).unwrap_err();
        assert!(matches!(e, ImportError::NotTemplate { .. }), "{text}: {e}");
    }
    assert!(is_template_path(Path::new("a/template.yml")) && is_template_path(Path::new("s.yaml")));
    assert!(!is_template_path(Path::new("a/lampyr.toml")) && !is_template_path(Path::new("dir")));
}
