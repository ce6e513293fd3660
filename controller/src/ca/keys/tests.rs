use super::*;

#[test]
fn init_then_load_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = init(dir.path(), "cluster.local", false).expect("init");
    assert_eq!(ca.roots().len(), 1);
    assert_eq!(ca.chain_pem().len(), 2, "intermediate then root");
    assert_eq!(ca.chain_pem()[1], ca.roots_pem());
    #[cfg(unix)]
    for name in [ROOT_KEY_FILE, CA_KEY_FILE] {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(name))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    // The dir doubles as the proxies' dev --ca-dir.
    hbone::DevCa::load_from_dir(dir.path()).expect("dev ca reads the same dir");
    let again = Ca::load(dir.path()).expect("load");
    assert_eq!(again.roots_pem(), ca.roots_pem());
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = init(dir.path(), "cluster.local", false).expect("init");
    let err = init(dir.path(), "cluster.local", false).unwrap_err();
    assert!(matches!(err, KeysError::Exists(_)), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    let second = init(dir.path(), "cluster.local", true).expect("force");
    assert_ne!(first.roots_pem(), second.roots_pem());
    assert!(matches!(
        init(dir.path(), "Bad Domain", true),
        Err(KeysError::TrustDomain(_))
    ));
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Ca::load(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("root-cert.pem is missing"),
        "{err}"
    );

    init(dir.path(), "cluster.local", false).expect("init");
    let other = tempfile::tempdir().expect("tempdir");
    init(other.path(), "cluster.local", false).expect("init");

    // A key from another CA.
    fs::copy(other.path().join(CA_KEY_FILE), dir.path().join(CA_KEY_FILE)).expect("copy");
    let err = Ca::load(dir.path()).unwrap_err();
    assert!(matches!(err, KeysError::KeyMismatch { .. }), "{err}");

    // An intermediate from another CA, with its own key.
    fs::copy(
        other.path().join(CA_CERT_FILE),
        dir.path().join(CA_CERT_FILE),
    )
    .expect("copy");
    let err = Ca::load(dir.path()).unwrap_err();
    assert!(matches!(err, KeysError::NotChained { .. }), "{err}");

    fs::write(dir.path().join(ROOT_CERT_FILE), "not pem").expect("write");
    let err = Ca::load(dir.path()).unwrap_err();
    assert!(
        matches!(err, KeysError::NotPem { .. }) && err.to_string().contains("root-cert.pem"),
        "{err}"
    );
}

#[test]
fn two_roots_during_rotation_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    init(dir.path(), "cluster.local", false).expect("init");
    let other = tempfile::tempdir().expect("tempdir");
    init(other.path(), "cluster.local", false).expect("init");
    let both = format!(
        "{}{}",
        fs::read_to_string(other.path().join(ROOT_CERT_FILE)).expect("read"),
        fs::read_to_string(dir.path().join(ROOT_CERT_FILE)).expect("read")
    );
    fs::write(dir.path().join(ROOT_CERT_FILE), both).expect("write");
    let ca = Ca::load(dir.path()).expect("load with two roots");
    assert_eq!(ca.roots().len(), 2);
}

#[test]
fn expired_root_and_leaf_as_intermediate_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    init(dir.path(), "cluster.local", false).expect("init");

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut old = CertificateParams::default();
    old.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    old.not_before = year(2000);
    old.not_after = year(2001);
    let expired = old.self_signed(&key).expect("self-signed");
    let good_root = fs::read_to_string(dir.path().join(ROOT_CERT_FILE)).expect("read");
    fs::write(dir.path().join(ROOT_CERT_FILE), expired.pem()).expect("write");
    let err = Ca::load(dir.path()).unwrap_err();
    assert!(
        matches!(err, KeysError::Expired { .. }) && err.to_string().contains("root-cert.pem"),
        "{err}"
    );
    fs::write(dir.path().join(ROOT_CERT_FILE), good_root).expect("write");

    let mut leaf = CertificateParams::default();
    leaf.is_ca = IsCa::ExplicitNoCa;
    let leaf = leaf.self_signed(&key).expect("leaf");
    fs::write(dir.path().join(CA_CERT_FILE), leaf.pem()).expect("write");
    let err = Ca::load(dir.path()).unwrap_err();
    assert!(
        matches!(err, KeysError::NotCa { .. }) && err.to_string().contains("ca-cert.pem"),
        "{err}"
    );
}

fn year(y: i32) -> time::OffsetDateTime {
    time::Date::from_calendar_date(y, time::Month::January, 1)
        .expect("date")
        .midnight()
        .assume_utc()
}
