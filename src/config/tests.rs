use super::*;

#[test]
fn defaults_need_nothing() {
    let config = Config::resolve(Overrides::default()).unwrap();
    assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(config.grace_period, Duration::from_secs(21 * 24 * 3600));
    assert_eq!(config.region.as_str(), DEFAULT_REGION);
}

/// The example configs in ops/ are complete and valid.
#[test]
fn example_configs_resolve() {
    for file in ["single-host.toml", "three-regions.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("ops/config")
            .join(file);
        let config = Config::resolve(Overrides {
            config_file: Some(path),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{file}: {e:#}"));
        assert!(!config.backup_regions.is_empty(), "{file}");
        assert_eq!(config.backup_regions[0].name, config.region, "{file}");
    }
}

#[test]
fn region_tables_are_checked() {
    let dir = std::env::temp_dir().join(format!("coffer-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, expected) in [
        ("[regions.eu]\nstore = \"ftp://x\"\n", "use s3://"),
        (
            "[regions.eu]\nstore = \"file://relative\"\n",
            "absolute path",
        ),
        ("[regions.eu]\nstore = \"s3://\"\n", "needs a bucket"),
        (
            "[regions.eu]\nstore = \"file:///x\"\nendpoint = \"http://a\"\n",
            "s3:// stores only",
        ),
        (
            "[regions.eu]\nstore = \"s3://b\"\nendpoint = \"localhost:3900\"\n",
            "not an http(s) URL",
        ),
        ("[backup]\nregions = [\"eu\"]\n", "no [regions.*] table"),
        (
            "[regions.eu]\nstore = \"s3://b\"\n[backup]\nregions = [\"us\"]\n",
            "no [regions.us] table",
        ),
        (
            "[regions.eu]\nstore = \"s3://b\"\n[backup]\nregions = [\"eu\", \"eu\"]\n",
            "twice",
        ),
        (
            "[regions.eu]\nstore = \"s3://b\"\nsecret = \"x\"\n",
            "unknown field",
        ),
    ] {
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        let error = Config::resolve(Overrides {
            config_file: Some(path),
            ..Default::default()
        })
        .map(|_| ())
        .unwrap_err();
        let error = format!("{error:#}");
        assert!(error.contains(expected), "{text}: {error}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_settings_are_named() {
    for (overrides, expected) in [
        (
            Overrides {
                listen: Some("nowhere".into()),
                ..Default::default()
            },
            "listen address",
        ),
        (
            Overrides {
                region: Some("EU West".into()),
                ..Default::default()
            },
            "region",
        ),
        (
            Overrides {
                grace_period: Some("soon".into()),
                ..Default::default()
            },
            "grace_period",
        ),
    ] {
        let error = Config::resolve(overrides).unwrap_err().to_string();
        assert!(error.contains(expected), "{error}");
    }
}
