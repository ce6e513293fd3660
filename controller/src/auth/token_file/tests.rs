use super::*;

const GOOD: &str = r#"
tokens:
- token: "s3cret-a"
  nodeProxy: { node: node-a }
- token: "s3cret-w"
  waypoint: { spiffeId: "spiffe://cluster.local/ns/default/sa/waypoint" }
"#;

#[tokio::test]
async fn known_tokens_map_to_callers() {
    let f = TokenFile::parse(GOOD, Path::new("tokens.yaml")).expect("parse");
    assert_eq!(
        f.authenticate("s3cret-a").await,
        Ok(Caller::NodeProxy {
            node: "node-a".into()
        })
    );
    assert_eq!(
        f.authenticate("s3cret-w").await,
        Ok(Caller::Waypoint {
            spiffe_id: "spiffe://cluster.local/ns/default/sa/waypoint".into()
        })
    );
    for wrong in ["s3cret-b", "s3cret-", "s3cret-aa", ""] {
        assert!(
            matches!(f.authenticate(wrong).await, Err(AuthError::Invalid(_))),
            "{wrong:?}"
        );
    }
    assert!(!format!("{f:?}").contains("s3cret"), "debug leaks tokens");
}

#[test]
fn bad_files_name_the_entry() {
    let cases = [
        ("tokens:\n- token: a\n  nodeProxy: { node: n }\n- token: a\n  nodeProxy: { node: m }\n", "entry #1: token repeats entry #0"),
        ("tokens:\n- token: ''\n  nodeProxy: { node: n }\n", "entry #0: token is empty"),
        ("tokens:\n- token: a\n", "entry #0: give one of"),
        ("tokens:\n- token: a\n  nodeProxy: { node: n }\n  waypoint: { spiffeId: 'spiffe://td/ns/a/sa/b' }\n", "not both"),
        ("tokens:\n- token: a\n  waypoint: { spiffeId: 'http://x' }\n", "entry #0: waypoint.spiffeId"),
        ("tokens:\n- token: a\n  nodeproxy: { node: n }\n", "unknown field"),
    ];
    for (text, want) in cases {
        let err = TokenFile::parse(text, Path::new("/etc/t.yaml")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(want) && msg.contains("/etc/t.yaml"),
            "{want}: {msg}"
        );
    }
    let err = TokenFile::load(Path::new("/nonexistent/t.yaml")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/t.yaml"), "{err}");
}
