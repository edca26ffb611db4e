//! Configuration tests: every field's check, overrides, and the one-line errors.

use super::*;

fn build(toml: &str) -> Result<Config, ConfigError> {
    Config::build(FileConfig::parse(toml, "test.toml")?, &Overrides::default())
}

#[test]
fn issue_shape_parses() {
    let c = build(
        r#"
listen = "127.0.0.1:6380"
[upstream]
url = "redis://127.0.0.1:6379/0"   # redis://[user:password@]host:port[/db]
max_connections = 8                 # shared upstream connections
timeout_ms = 5000
connect_timeout_ms = 2000
"#,
    )
    .unwrap();
    assert_eq!(c.listen.port(), 6380);
    assert_eq!(c.upstream.max_connections, 8);
    assert_eq!(c.upstream.url.db, 0);
}

/// Found by the config_load fuzz target: a multi-line TOML string quoted back in an error.
#[test]
fn errors_quoting_a_multi_line_value_stay_on_one_line() {
    let text = "listen = \"\"\"\"128\n[rruption on = \"previous_en = \"\"\"\n";
    let e = build(text).unwrap_err().to_string();
    assert!(!e.contains('\n'), "{e}");
    assert!(e.contains("listen") && e.contains("128\\n[rruption"), "{e}");
    let e = build("[upstream]\nurl = \"\"\"redis://a\nb:1\"\"\"\n")
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\n') && e.contains("upstream.url"), "{e}");
}

#[test]
fn empty_file_gives_defaults() {
    let c = build("").unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:6380");
    assert_eq!(c.upstream.url.host, "127.0.0.1");
    assert_eq!(c.upstream.url.port, 6379);
    assert!(c.rules.is_empty());
}

#[test]
fn unknown_key_names_the_field() {
    let e = build("[upstream]\nmax_conections = 3\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("upstream.max_conections"), "{e}");
    assert!(e.contains("unknown field"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn bad_value_names_the_field() {
    let e = build("[upstream]\ntimeout_ms = \"soon\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("upstream.timeout_ms"), "{e}");
    let e = build("[upstream]\nmax_connections = 0\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("upstream.max_connections"), "{e}");
    let e = build("listen = \"nowhere\"\n").unwrap_err().to_string();
    assert!(e.contains("listen"), "{e}");
    let e = build("[upstream]\nurl = \"http://x\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("upstream.url"), "{e}");
}

#[test]
fn state_rule_options_are_validated_with_the_upstream() {
    let rule = "[[state]]\npattern = \"d:*\"\ncompression = \"zstd\"\ndictionary = \"auto\"\n";
    let c = build(rule).unwrap();
    assert!(
        c.rules
            .iter()
            .next()
            .is_some_and(|r| r.dictionary && r.delta.on)
    );
    let e = build(&format!(
        "[upstream]\nmode = \"cluster\"\nnodes = [\"127.0.0.1:7000\"]\n{rule}"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("state[0].dictionary: auto is not supported with upstream.mode = \"cluster\""),
        "{e}"
    );
    let e = build("[[state]]\npattern = \"x:*\"\ndelta_chain = 0\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("state[0].delta_chain"), "{e}");
}

#[test]
fn tls_sections() {
    // rediss:// gets a connector even without [upstream.tls] (webpki roots, URL host as SNI).
    let c = build("[upstream]\nurl = \"rediss://redis.example.com:6380\"\n").unwrap();
    let tls = c.upstream.tls.as_ref().expect("connector for rediss://");
    assert_eq!(
        tls.server_name,
        rustls::pki_types::ServerName::try_from("redis.example.com").unwrap()
    );
    assert!(c.tls.is_none());
    assert!(build("").unwrap().upstream.tls.is_none());

    // [upstream.tls] with a plain redis:// URL is a mistake, not a silent downgrade.
    let e = build("[upstream.tls]\nserver_name = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("upstream.tls:"), "{e}");
    assert!(e.contains("rediss://"), "{e}");

    let e = build("[tls]\nkey_file = \"k.pem\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("tls.cert_file"), "{e}");
    let e = build("[tls]\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"k.pem\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("config: tls.cert_file: cannot read /nonexistent/c.pem"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    let e = build("[tls]\ncert_file = \"c\"\nkey_file = \"k\"\nclient_ca = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("tls.client_ca"), "{e}");

    let e = build(
        "[upstream]\nurl = \"rediss://h\"\n[upstream.tls]\nca_file = \"/nonexistent/ca.pem\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("upstream.tls.ca_file: cannot read"), "{e}");
    let e = build(
        "[upstream]\nurl = \"rediss://h\"\n[upstream.tls]\nca_file = \"c\"\n\
         insecure_skip_verify = true\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("upstream.tls.insecure_skip_verify"), "{e}");
    let c = build(
        "[upstream]\nurl = \"rediss://10.1.2.3\"\n[upstream.tls]\n\
         server_name = \"redis.internal\"\ninsecure_skip_verify = true\n",
    )
    .unwrap();
    let tls = c.upstream.tls.as_ref().unwrap();
    assert!(tls.insecure);
    assert_eq!(
        tls.server_name,
        rustls::pki_types::ServerName::try_from("redis.internal").unwrap()
    );
    // Config stays Clone + Debug, and Debug prints no key material.
    let dbg = format!("{:?}", c.clone());
    assert!(dbg.contains("ClientTls"), "{dbg}");
}

#[test]
fn overrides_win_over_file() {
    let f = FileConfig::parse("listen = \"127.0.0.1:1\"\n", "t").unwrap();
    let o = Overrides {
        listen: Some("127.0.0.1:2".into()),
        upstream: Some("redis://u:p@10.0.0.1:7000/3".into()),
        ..Default::default()
    };
    let c = Config::build(f, &o).unwrap();
    assert_eq!(c.listen.port(), 2);
    assert_eq!(c.upstream.url.port, 7000);
    assert_eq!(c.upstream.url.db, 3);
    assert_eq!(c.upstream.url.username.as_deref(), Some("u"));
}
