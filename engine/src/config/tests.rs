use super::*;

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("carflow.toml");
    std::fs::write(&path, text).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load_with_env(Some(&path), |k| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
}

#[test]
fn an_empty_file_is_the_embedded_default() {
    let c = load("", &[]).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.source, SourceKind::Generator);
    assert_eq!(c.batch.linger.0, Duration::from_secs(1));
}

#[test]
fn the_environment_overrides_the_file() {
    let c = load(
        "source = \"kafka\"\n[batch]\nmax_rows = 5\n[kafka]\nbrokers = \"file:9092\"\n",
        &[
            ("CARFLOW_BATCH_MAX_ROWS", "7"),
            ("CARFLOW_KAFKA_BROKERS", "127.0.0.1:9092"),
            ("CARFLOW_INFLUX_TOKEN", "admin:s3cret"),
            ("CARFLOW_BATCH_LINGER", "250ms"),
            ("CARFLOW_QUERIES_RELOAD", "false"),
        ],
    )
    .unwrap();
    assert_eq!(c.batch.max_rows, 7);
    assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(c.batch.linger.0, Duration::from_millis(250));
    assert!(!c.queries.reload);
    assert_eq!(c.influx.token.0, "admin:s3cret");
    let shown = format!("{c:?}");
    assert!(!shown.contains("s3cret"), "secrets never show in Debug");
    assert!(!c.to_redacted_toml().contains("s3cret"));
}

#[test]
fn a_bad_environment_value_names_the_variable_and_key() {
    let err = load("", &[("CARFLOW_BATCH_MAX_ROWS", "lots")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("batch.max_rows") && err.contains("CARFLOW_BATCH_MAX_ROWS"),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_refused_with_where_they_are() {
    let err = load("[batch]\nmax_rowz = 10\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_rowz") && err.contains("max_rows"),
        "{err}"
    );
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn every_problem_is_listed_with_its_key_and_fix() {
    let err = load(
        "source = \"kafka\"\n[batch]\nmax_rows = 0\nlinger = \"0s\"\n[kafka]\nbrokers = \"\"\n[lake]\nroot = \"s3://b/x\"\n[influx]\nurl = \"localhost:8086\"\n",
        &[],
    )
    .unwrap_err();
    let ConfigError::Invalid(problems) = &err else {
        panic!("{err}")
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "batch.max_rows",
            "batch.linger",
            "kafka.brokers",
            "lake.root",
            "influx.url"
        ]
    );
    let text = err.to_string();
    assert!(
        text.contains("5 problems") && text.contains("http://127.0.0.1:8086"),
        "{text}"
    );
}

#[test]
fn an_api_beyond_loopback_needs_a_token() {
    let err = load("[api]\nlisten = \"0.0.0.0:8080\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("api.token") && err.contains("CARFLOW_API_TOKEN"),
        "{err}"
    );
    assert!(load("[api]\nlisten = \"0.0.0.0:8080\"\ntoken = \"t\"\n", &[]).is_ok());
}

#[test]
fn durations_read_and_print_like_people_write_them() {
    for (s, ms) in [
        ("250ms", 250),
        ("1s", 1000),
        ("1.5s", 1500),
        ("4m", 240_000),
        ("1h", 3_600_000),
    ] {
        assert_eq!(HumanDuration::parse(s).unwrap().0.as_millis(), ms);
    }
    assert_eq!(HumanDuration(Duration::from_secs(240)).to_string(), "4m");
    assert!(HumanDuration::parse("soon").unwrap_err().contains("500ms"));
    assert!(HumanDuration::parse("5 parsecs").is_err());
}

#[test]
fn secret_looking_kafka_properties_are_never_shown() {
    let text = r#"
[kafka.properties]
"sasl.password" = "hunter2"
"ssl.key.password" = "k3y"
"sasl.oauthbearer.client.secret" = "s3cret"
"ssl.keystore.location" = "/etc/ks.p12"
"fetch.max.bytes" = "52428800"
"#;
    let c: Config = toml::from_str(text).unwrap();
    let debug = format!("{c:?}");
    let printed = c.to_redacted_toml();
    for secret in ["hunter2", "k3y", "s3cret", "/etc/ks.p12"] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
        assert!(!printed.contains(secret), "{secret} in {printed}");
    }
    assert!(debug.contains("52428800") && printed.contains("52428800"));
    assert!(printed.contains("\"sasl.password\" = \"***\""), "{printed}");
}

#[test]
fn new_keys_have_defaults_and_named_problems() {
    let c = Config::default();
    assert_eq!(c.events.min_time_ms(), 946_684_800_000);
    assert_eq!(c.lake.on_new_topic, OnNewTopic::Refuse);
    let env = |k: &str| match k {
        "CARFLOW_EVENTS_MIN_TIME" => Some("yesterday".to_string()),
        "CARFLOW_LAKE_ON_NEW_TOPIC" => Some("new-ledger".to_string()),
        _ => None,
    };
    let err = Config::load_with_env(None, env).unwrap_err().to_string();
    assert!(err.contains("events.min_time"), "{err}");
    let env = |k: &str| (k == "CARFLOW_LAKE_ON_NEW_TOPIC").then(|| "new-ledger".to_string());
    assert_eq!(
        Config::load_with_env(None, env).unwrap().lake.on_new_topic,
        OnNewTopic::NewLedger
    );
}

#[test]
fn typed_keys_refuse_bad_values_naming_the_key() {
    for (var, key) in [
        ("CARFLOW_KAFKA_START_FROM", "kafka.start_from"),
        ("CARFLOW_GENERATOR_START", "generator.start"),
        ("CARFLOW_EVENTS_MIN_TIME", "events.min_time"),
    ] {
        let env = |k: &str| (k == var).then(|| "yesterday".to_string());
        let err = Config::load_with_env(None, env).unwrap_err().to_string();
        assert!(err.contains(key), "{var}: {err}");
        assert!(err.contains("yesterday"), "{var}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[kafka]\nstart_from = \"oldest\"\n").unwrap();
    let err = Config::load(Some(&file)).unwrap_err().to_string();
    assert!(
        err.contains("start_from") && err.contains("earliest"),
        "{err}"
    );
    let env = |k: &str| match k {
        "CARFLOW_KAFKA_START_FROM" => Some("latest".to_string()),
        "CARFLOW_GENERATOR_START" => Some("2026-03-01T12:00:00+01:00".to_string()),
        _ => None,
    };
    let c = Config::load_with_env(None, env).unwrap();
    assert_eq!(c.kafka.start_from, StartFrom::Latest);
    assert_eq!(c.generator.start.ms(), 1_772_362_800_000);
    assert_eq!(c.generator.start.to_string(), "2026-03-01T11:00:00Z");
}
