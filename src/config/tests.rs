use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("rotator.yaml"))
}

fn example() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/rotator.yaml")).unwrap()
}

fn problems(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("accepted a bad configuration:\n{text}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn the_shipped_example_is_valid() {
    let config = parse(&example()).unwrap();
    let rotation = &config.rotations[0];
    assert_eq!(rotation.lifetime, HumanDuration::days(180));
    assert_eq!(rotation.renew_before(), HumanDuration::days(60));
    assert_eq!(rotation.targets.len(), 2);
    assert!(matches!(&rotation.verification, VerificationConfig::Smtp(s) if s.port == 587));
}

#[test]
fn renew_before_defaults_to_a_third_of_the_lifetime() {
    let text = example().replace("    renewBefore: 60d                   # default: a third of the lifetime\n", "").replace("lifetime: 180d", "lifetime: 90d");
    assert_eq!(parse(&text).unwrap().rotations[0].renew_before(), HumanDuration::days(30));
}

#[test]
fn every_problem_is_reported_with_its_field() {
    let text = example()
        .replace("clientId: 0b5e2f3c-9d0a-4f6e-8a53-1e0b9c7d2a11", "clientId: not-a-guid")
        .replace("lifetime: 180d", "lifetime: 1000d")
        .replace("renewBefore: 60d", "renewBefore: 2000d")
        .replace("secretName: dify-smtp-password", "secretName: dify_smtp")
        .replace("SMTP_PASSWORD: \"{{secret}}\"", "SMTP_PASSWORD: \"pw={{secret}}\"");
    let message = problems(&text);
    for expected in [
        "rotations[0] (dify-smtp).application.clientId: \"not-a-guid\" is not a GUID",
        "lifetime: 1000d is outside 1s..730d",
        "renewBefore: 2000d must be shorter than lifetime",
        "secretName: \"dify_smtp\" must be 1-127 characters",
        "exactly one key must be \"{{secret}}\"",
        "nothing was changed",
    ] {
        assert!(message.contains(expected), "missing {expected:?} in:\n{message}");
    }
}

#[test]
fn unknown_store_kinds_and_fields_are_refused() {
    let text = example().replace("- keyVault:", "- s3Bucket:");
    assert!(problems(&text).contains("unknown variant `s3Bucket`, expected `keyVault` or `kubernetesSecret`"));
    let text = example().replace("renewBefore: 60d", "renewBefor: 60d");
    assert!(problems(&text).contains("unknown field `renewBefor`"));
}

#[test]
fn bad_durations_and_templates_explain_themselves() {
    assert!(problems(&example().replace("lifetime: 180d", "lifetime: six months")).contains("write it like 180d"));
    let text = example().replace("\"{{smtpHost}}\"", "\"{{smtp_host}}\"");
    assert!(problems(&text).contains("unknown variable {{smtp_host}}"));
}

#[test]
fn plain_auth_against_acs_is_refused_before_anything_runs() {
    let text = example().replace("        port: 587\n", "        port: 587\n        authMechanism: PLAIN\n");
    assert!(problems(&text).contains("accepts AUTH LOGIN only"));
}

#[test]
fn two_rotations_of_one_application_are_refused() {
    let text = example();
    let rotation = &text[text.find("  - name: dify-smtp").unwrap()..];
    let twice = format!("{text}{}", rotation.replace("name: dify-smtp", "name: dify-smtp-copy"));
    let refused = problems(&twice);
    assert!(refused.contains("rotations[1] (dify-smtp-copy).application: 0b5e2f3c-9d0a-4f6e-8a53-1e0b9c7d2a11 is also rotated by \"dify-smtp\""), "{refused}");
}

#[test]
fn private_vault_hosts_are_bare_host_names() {
    let text = example().replace("  graphUrl: https://graph.microsoft.com\n", "  graphUrl: https://graph.microsoft.com\n  keyVault:\n    privateHosts: [kv-proxy.internal.example.com, \"https://kv.example.com\"]\n");
    let refused = problems(&text);
    assert!(refused.contains("azure.keyVault.privateHosts: \"https://kv.example.com\" is not a host name"), "{refused}");
    assert!(refused.contains("has 1 problem(s)"), "the bare host name is accepted: {refused}");
}

/// Every duration a rotation takes, at its extremes: accepted at the edge of its range,
/// refused past it (up to `300000y`, which once overflowed the date arithmetic) with the
/// field, the value and the range in the message.
#[test]
fn every_duration_field_is_bounded_and_says_its_range() {
    let smtp = "        retryBudget: 5m                # Entra replication of a new secret takes seconds to minutes";
    let with = |field: &str, value: &str| -> String {
        let text = example()
            .replace(smtp, &format!("{smtp}\n        retryInterval: 5s\n        timeout: 30s"))
            .replace("    targets:\n", "    orphanGracePeriod: 2h\n    targets:\n");
        let line = text.lines().find(|l| l.trim_start().starts_with(&format!("{field}:"))).unwrap_or_else(|| panic!("{field} in the example"));
        let indent = &line[..line.len() - line.trim_start().len()];
        text.replace(line, &format!("{indent}{field}: {value}"))
    };
    // (field, largest accepted, smallest refused above, message for the refused one)
    let cases = [
        ("lifetime", "730d", "731d", "lifetime: 731d is outside 1s..730d"),
        ("revokeGracePeriod", "180d", "181d", "revokeGracePeriod: 181d is longer than lifetime 180d"),
        ("retryBudget", "1h", "61m", "retryBudget: 61m is outside 0s..1h"),
        ("retryInterval", "5m", "301s", "retryInterval: 301s is outside 100ms..5m"),
        ("timeout", "5m", "301s", "timeout: 301s is outside 1s..5m"),
    ];
    for (field, edge, past, message) in cases {
        assert!(parse(&with(field, edge)).is_ok(), "{field}: {edge} refused: {}", problems(&with(field, edge)));
        for value in [past, "300000y"] {
            let refused = problems(&with(field, value));
            assert!(refused.contains(&format!("{field}: ")) && refused.contains("nothing was changed"), "{field}: {value}: {refused}");
        }
        assert!(problems(&with(field, past)).contains(message), "{field}: {past}: {}", problems(&with(field, past)));
    }
    // The lower ends.
    for (field, value, message) in [
        ("lifetime", "0s", "lifetime: 0s is outside 1s..730d"),
        ("retryInterval", "0s", "retryInterval: 0s is outside 100ms..5m"),
        ("timeout", "0s", "timeout: 0s is outside 1s..5m"),
        ("renewBefore", "180d", "renewBefore: 180d must be shorter than lifetime 180d"),
    ] {
        assert!(problems(&with(field, value)).contains(message), "{field}: {value}: {}", problems(&with(field, value)));
    }
    assert!(parse(&with("retryBudget", "0s")).is_ok(), "a budget of 0s means one attempt");
    let orphan = example().replace("    revokeGracePeriod: 1h", "    revokeGracePeriod: 1h\n    orphanGracePeriod: 300000y");
    assert!(problems(&orphan).contains("orphanGracePeriod: 300000y is longer than lifetime 180d"));
}

#[test]
fn two_years_is_explained_in_the_unit_it_was_written_in() {
    let refused = problems(&example().replace("lifetime: 180d", "lifetime: 2y"));
    assert!(
        refused.contains("lifetime: 2y is outside 1s..730d; Entra client secrets live at most 2 years (2y is 730.5 days: a year counts 365.25 days; write 730d for the longest)"),
        "{refused}"
    );
}

#[test]
fn a_bad_template_or_duration_does_not_hide_the_other_problems() {
    let text = example()
        .replace("SMTP_PASSWORD: \"{{secret}}\"", "SMTP_PASSWORD: \"{{secrt}}\"")
        .replace("lifetime: 180d", "lifetime: 18x")
        .replace("clientId: 0b5e2f3c-9d0a-4f6e-8a53-1e0b9c7d2a11", "clientId: not-a-guid")
        .replace("secretName: dify-smtp-password", "secretName: dify_smtp");
    let message = problems(&text);
    for expected in [
        "rotations[0] (dify-smtp).targets[1].kubernetesSecret.keys.SMTP_PASSWORD: template \"{{secrt}}\" uses unknown variable {{secrt}}",
        "rotations[0] (dify-smtp).lifetime: \"18x\" is not a duration",
        "rotations[0] (dify-smtp).application.clientId: \"not-a-guid\" is not a GUID",
        "secretName: \"dify_smtp\" must be 1-127 characters",
        "has 4 problem(s)",
    ] {
        assert!(message.contains(expected), "missing {expected:?} in:\n{message}");
    }
    // What only follows from the stand-ins is not reported: the default lifetime in place of
    // the bad one, the literal in place of the bad template.
    assert!(!message.contains("renewBefore"), "{message}");
    assert!(!message.contains("exactly one key"), "{message}");
}

#[test]
fn a_bad_duration_beside_an_unreadable_field_lists_both() {
    let text = example().replace("lifetime: 180d", "lifetime: 18x").replace("renewBefore: 60d", "renewBefor: 60d");
    let message = problems(&text);
    assert!(message.contains("lifetime: \"18x\" is not a duration"), "{message}");
    assert!(message.contains("unknown field `renewBefor`"), "{message}");
}

/// Issue 19 items 1 and 2: the proof mode and the mail quota, by name or in figures.
#[test]
fn verification_mode_and_quota_are_read_and_checked() {
    let smtp = |extra: &str| example().replace("        port: 587\n", &format!("        port: 587\n{extra}"));
    let settings = |text: &str| match parse(text).unwrap().rotations.remove(0).verification {
        VerificationConfig::Smtp(smtp) => (smtp.mode, smtp.quota),
        _ => panic!("the example verifies through smtp"),
    };
    assert_eq!(settings(&example()), (SmtpMode::Deliver, None));
    assert_eq!(
        settings(&smtp("        mode: handshake\n        quota: customDomain\n")),
        (SmtpMode::Handshake, Some(MailQuotaConfig::Named(NamedMailQuota::CustomDomain)))
    );
    assert_eq!(
        settings(&smtp("        quota: {perMinute: 2, perHour: 20}\n")).1,
        Some(MailQuotaConfig::Figures { per_minute: 2, per_hour: 20 })
    );
    assert!(problems(&smtp("        quota: {perMinute: 5, perHour: 2}\n")).contains("quota: perMinute 5 and perHour 2 must be"));
    assert!(problems(&smtp("        mode: sendmail\n")).contains("unknown variant `sendmail`"));
}

#[test]
fn a_rotation_naming_an_unknown_identity_is_refused_with_the_known_ones() {
    let identities = "identities:\n  - name: customer-a\n    credential:\n      type: managedIdentity\n  - name: customer-a\n    credential:\n      type: managedIdentity\nrotations:\n";
    let text = example().replacen("rotations:\n", identities, 1).replacen("  - name: dify-smtp\n", "  - name: dify-smtp\n    identity: customer-b\n", 1);
    let message = problems(&text);
    assert!(message.contains("rotations[0] (dify-smtp).identity: \"customer-b\" is not one of identities: (customer-a, customer-a)"), "{message}");
    assert!(message.contains("identities[1].name: \"customer-a\" is empty or used twice"), "{message}");
}

/// Issue 19 item 3: Exchange Online's defaults (host, port, scope, the sender is the
/// mailbox) and a scope that client credentials cannot ask for.
#[test]
fn exchange_online_verification_is_read_with_its_defaults_and_checked() {
    let text = example();
    let head = text.split("    verification:\n").next().unwrap();
    let with = |block: &str| format!("{head}    verification:\n      exchangeOnline:\n{block}");
    let rotation = parse(&with("        mailbox: dify@contoso.com\n        to: canary@contoso.com\n")).unwrap().rotations.remove(0);
    let VerificationConfig::ExchangeOnline(exchange) = rotation.verification else { panic!("exchangeOnline") };
    assert_eq!((exchange.host.as_str(), exchange.port), ("smtp.office365.com", 587));
    assert_eq!(exchange.scope, "https://outlook.office365.com/.default");
    assert_eq!(exchange.sender(), "dify@contoso.com");
    assert_eq!(exchange.mode, SmtpMode::Deliver);
    let refused = problems(&with(
        "        mailbox: dify@contoso.com\n        to: canary@contoso.com\n        scope: https://outlook.office365.us\n",
    ));
    assert!(refused.contains("verification.exchangeOnline.scope: \"https://outlook.office365.us\" must end in /.default"), "{refused}");
}
