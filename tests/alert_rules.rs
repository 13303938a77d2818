//! Alert rules from TOML: the example file is the built-in defaults, and a
//! mistyped key is an error that names it.

use lambda_speed::alerts::AlertRules;

#[test]
fn the_example_file_is_the_defaults() {
    let text = include_str!("../infra/alerts.example.toml");
    let rules: AlertRules = toml::from_str(text).expect("the example parses");
    assert_eq!(rules, AlertRules::defaults());
}

#[test]
fn a_mistyped_rule_is_named() {
    let error = toml::from_str::<AlertRules>("[device_offline]\nafter = 300000\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("after"), "{error}");
    let empty: AlertRules = toml::from_str("").unwrap();
    assert_eq!(
        empty,
        AlertRules::default(),
        "no file content: every rule off"
    );
}
