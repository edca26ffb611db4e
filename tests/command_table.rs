//! statecar's command table is Redis's own: every command and subcommand a real redis-server
//! knows (`COMMAND INFO`) is in src/command/table.rs with the same arity, flags, ACL categories,
//! key specifications and cluster tips, and nothing else is.
//!
//! `STATECAR_WRITE_TABLE=1 cargo test --test command_table` rewrites the table from the
//! installed redis-server (then run `cargo fmt`).

mod common;

use common::RedisServer;
use statecar::command::spec::*;
use statecar::command::table::COMMANDS;

/// A `COMMAND INFO` reply, read as nested values.
#[derive(Debug, Clone)]
enum V {
    S(String),
    I(i64),
    A(Vec<V>),
    Nil,
}

fn conv(v: redis::Value) -> V {
    match v {
        redis::Value::BulkString(b) => V::S(String::from_utf8_lossy(&b).into_owned()),
        redis::Value::SimpleString(s) => V::S(s),
        redis::Value::Int(i) => V::I(i),
        redis::Value::Array(a) | redis::Value::Set(a) => V::A(a.into_iter().map(conv).collect()),
        redis::Value::Map(m) => V::A(
            m.into_iter()
                .flat_map(|(k, v)| [conv(k), conv(v)])
                .collect(),
        ),
        redis::Value::Nil => V::Nil,
        other => panic!("unexpected value in COMMAND INFO: {other:?}"),
    }
}

impl V {
    fn s(&self) -> &str {
        match self {
            V::S(s) => s,
            other => panic!("expected a string, got {other:?}"),
        }
    }
    fn i(&self) -> i64 {
        match self {
            V::I(i) => *i,
            other => panic!("expected an integer, got {other:?}"),
        }
    }
    fn a(&self) -> &[V] {
        match self {
            V::A(a) => a,
            V::Nil => &[],
            other => panic!("expected an array, got {other:?}"),
        }
    }
    /// A flat key/value array's field.
    fn field(&self, name: &str) -> Option<&V> {
        self.a()
            .chunks(2)
            .find(|kv| kv[0].s() == name)
            .map(|kv| &kv[1])
    }
}

/// A spec read from Redis, owning its strings, before it is compared or rendered.
#[derive(Debug, Clone, PartialEq)]
struct Want {
    name: String,
    arity: i16,
    flags: Flags,
    acl: Acl,
    tips: Tips,
    keys: Vec<(KeyFlags, WantBegin, Find)>,
    subs: Vec<Want>,
}

#[derive(Debug, Clone, PartialEq)]
enum WantBegin {
    Index(i32),
    Keyword(String, i32),
    Unknown,
}

fn read(info: &V) -> Want {
    let f = info.a();
    let mut flags = Flags::default();
    for x in f[2].a() {
        flags = flags | Flags::named(x.s()).unwrap_or_else(|| panic!("unknown flag {}", x.s()));
    }
    let mut acl = Acl::default();
    for x in f[6].a() {
        let name = x.s().trim_start_matches('@');
        acl = acl | Acl::named(name).unwrap_or_else(|| panic!("unknown ACL category {name}"));
    }
    let mut tips = Tips::NONE;
    for t in f[7].a() {
        match t.s().split_once(':') {
            Some(("request_policy", p)) => {
                tips.request = match p {
                    "all_nodes" => Request::AllNodes,
                    "all_shards" => Request::AllShards,
                    "multi_shard" => Request::MultiShard,
                    "special" => Request::Special,
                    o => panic!("unknown request policy {o}"),
                }
            }
            Some(("response_policy", p)) => {
                tips.response = match p {
                    "one_succeeded" => Response::OneSucceeded,
                    "all_succeeded" => Response::AllSucceeded,
                    "agg_logical_and" => Response::AggLogicalAnd,
                    "agg_logical_or" => Response::AggLogicalOr,
                    "agg_min" => Response::AggMin,
                    "agg_max" => Response::AggMax,
                    "agg_sum" => Response::AggSum,
                    "special" => Response::Special,
                    o => panic!("unknown response policy {o}"),
                }
            }
            None if t.s() == "nondeterministic_output" => tips.nondeterministic = true,
            None if t.s() == "nondeterministic_output_order" => tips.unordered = true,
            _ => panic!("unknown tip {}", t.s()),
        }
    }
    let keys = f[8]
        .a()
        .iter()
        .map(|k| {
            let mut kf = KeyFlags::default();
            for x in k.field("flags").map(V::a).unwrap_or_default() {
                kf = kf | KeyFlags::named(x.s()).unwrap_or_else(|| panic!("key flag {}", x.s()));
            }
            let bs = k.field("begin_search").expect("begin_search");
            let spec = bs.field("spec").expect("spec");
            let begin = match bs.field("type").map(V::s) {
                Some("index") => WantBegin::Index(spec.field("index").expect("index").i() as i32),
                Some("keyword") => WantBegin::Keyword(
                    spec.field("keyword").expect("keyword").s().to_string(),
                    spec.field("startfrom").expect("startfrom").i() as i32,
                ),
                _ => WantBegin::Unknown,
            };
            let fk = k.field("find_keys").expect("find_keys");
            let spec = fk.field("spec").expect("spec");
            let n = |name: &str| spec.field(name).map(V::i).unwrap_or(0) as i32;
            let find = match fk.field("type").map(V::s) {
                Some("range") => Find::Range {
                    lastkey: n("lastkey"),
                    step: n("keystep"),
                    limit: n("limit"),
                },
                Some("keynum") => Find::Keynum {
                    keynumidx: n("keynumidx"),
                    firstkey: n("firstkey"),
                    step: n("keystep"),
                },
                _ => Find::Unknown,
            };
            (kf, begin, find)
        })
        .collect();
    let mut subs: Vec<Want> = f[9].a().iter().map(read).collect();
    subs.sort_by(|a, b| a.name.cmp(&b.name));
    Want {
        name: f[0].s().to_string(),
        arity: f[1].i() as i16,
        flags,
        acl,
        tips,
        keys,
        subs,
    }
}

fn from_table(s: &Spec) -> Want {
    Want {
        name: s.name.to_string(),
        arity: s.arity,
        flags: s.flags,
        acl: s.acl,
        tips: s.tips,
        keys: s
            .keys
            .iter()
            .map(|k| {
                let b = match k.begin {
                    Begin::Index(i) => WantBegin::Index(i),
                    Begin::Keyword { keyword, startfrom } => {
                        WantBegin::Keyword(keyword.to_string(), startfrom)
                    }
                    Begin::Unknown => WantBegin::Unknown,
                };
                (k.flags, b, k.find)
            })
            .collect(),
        subs: s.subcommands.iter().map(from_table).collect(),
    }
}

/// `Flags(F::WRITE.0 | F::DENYOOM.0)`: the set spelled out, usable in a static.
fn bits(names: Vec<&str>, prefix: &str, empty: &str) -> String {
    if names.is_empty() {
        return empty.to_string();
    }
    let ty = empty.split('(').next().unwrap_or_default();
    let set = names
        .iter()
        .map(|n| format!("{prefix}{}.0", n.to_ascii_uppercase()))
        .collect::<Vec<_>>()
        .join(" | ");
    format!("{ty}({set})")
}

fn render(w: &Want, out: &mut String, indent: &str) {
    let flags = bits(w.flags.names(), "F::", "Flags(0)");
    let acl = bits(
        w.acl
            .names()
            .into_iter()
            .map(|n| match n {
                "write" => "write_cat",
                "pubsub" => "pubsub_cat",
                "admin" => "admin_cat",
                "fast" => "fast_cat",
                "blocking" => "blocking_cat",
                o => o,
            })
            .collect(),
        "A::",
        "Acl(0)",
    );
    let tips = if w.tips == Tips::NONE {
        "Tips::NONE".to_string()
    } else {
        format!(
            "Tips {{ request: Request::{:?}, response: Response::{:?}, nondeterministic: {}, unordered: {} }}",
            w.tips.request, w.tips.response, w.tips.nondeterministic, w.tips.unordered
        )
    };
    let keys: Vec<String> = w
        .keys
        .iter()
        .map(|(kf, b, f)| {
            let kf = bits(kf.names(), "K::", "KeyFlags(0)");
            let b = match b {
                WantBegin::Index(i) => format!("Begin::Index({i})"),
                WantBegin::Keyword(k, s) => {
                    format!("Begin::Keyword {{ keyword: {k:?}, startfrom: {s} }}")
                }
                WantBegin::Unknown => "Begin::Unknown".into(),
            };
            let f = match f {
                Find::Range {
                    lastkey,
                    step,
                    limit,
                } => format!("Find::Range {{ lastkey: {lastkey}, step: {step}, limit: {limit} }}"),
                Find::Keynum {
                    keynumidx,
                    firstkey,
                    step,
                } => format!(
                    "Find::Keynum {{ keynumidx: {keynumidx}, firstkey: {firstkey}, step: {step} }}"
                ),
                Find::Unknown => "Find::Unknown".into(),
            };
            format!("KeySpec {{ flags: {kf}, begin: {b}, find: {f} }}")
        })
        .collect();
    out.push_str(&format!(
        "{indent}Spec {{ name: {:?}, arity: {}, flags: {flags}, acl: {acl}, tips: {tips}, keys: &[{}], subcommands: &[",
        w.name,
        w.arity,
        keys.join(", ")
    ));
    if w.subs.is_empty() {
        out.push_str("] },\n");
    } else {
        out.push('\n');
        for s in &w.subs {
            render(s, out, &format!("{indent}    "));
        }
        out.push_str(&format!("{indent}] }},\n"));
    }
}

#[test]
fn the_table_is_what_redis_says() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client.get_connection().expect("connect");
    let info: redis::Value = redis::cmd("COMMAND")
        .arg("INFO")
        .query(&mut conn)
        .expect("COMMAND INFO");
    let mut want: Vec<Want> = conv(info).a().iter().map(read).collect();
    want.sort_by(|a, b| a.name.cmp(&b.name));

    if std::env::var_os("STATECAR_WRITE_TABLE").is_some() {
        let version: redis::InfoDict = redis::cmd("INFO")
            .arg("server")
            .query(&mut conn)
            .expect("INFO");
        let v: String = version.get("redis_version").unwrap_or_default();
        let mut out = format!(
            "//! Redis {v}'s commands, as its `COMMAND INFO` describes them. Generated by\n\
             //! tests/command_table.rs (`STATECAR_WRITE_TABLE=1 cargo test --test command_table`, then\n\
             //! `cargo fmt`); that test checks it against the installed redis-server. Do not edit by hand.\n\n\
             use super::spec::{{self as F, Acl, Begin, Find, Flags, KeyFlags, KeySpec, Request, Response, Spec, Tips}};\n\
             use super::spec as A;\n\
             use super::spec as K;\n\n\
             /// Every command, sorted by name; subcommands sorted inside their container.\n\
             pub static COMMANDS: &[Spec] = &[\n"
        );
        for w in &want {
            render(w, &mut out, "    ");
        }
        out.push_str("];\n");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/command/table.rs");
        std::fs::write(path, out).expect("write table");
        eprintln!("wrote {path}; run cargo fmt");
        return;
    }

    let have: Vec<Want> = COMMANDS.iter().map(from_table).collect();
    let names = |v: &[Want]| v.iter().map(|w| w.name.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&have),
        names(&want),
        "the table's commands differ from Redis's; regenerate with STATECAR_WRITE_TABLE=1"
    );
    for (h, w) in have.iter().zip(&want) {
        assert_eq!(h, w, "{} differs from Redis's COMMAND INFO", w.name);
    }
    assert!(
        want.len() > 200,
        "{} commands: COMMAND INFO looks truncated",
        want.len()
    );
}
