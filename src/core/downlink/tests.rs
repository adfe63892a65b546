use super::*;

type Headers<'a> = &'a [(&'a str, &'a [u8])];

fn record(key: Option<&str>, headers: &[(&str, &[u8])], payload: &[u8]) -> Record {
    Record {
        topic: "device-commands".into(),
        partition: 3,
        offset: 41,
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        headers: headers.iter().map(|(n, v)| (n.to_string(), Some(Bytes::copy_from_slice(v)))).collect(),
        payload: Bytes::copy_from_slice(payload),
    }
}

fn downlink(topic: &str, qos: Setting<u8>, retain: Setting<bool>) -> Downlink {
    Downlink {
        name: "commands".into(),
        kafka_topics: vec!["device-commands".into()],
        group_id: "g".into(),
        mqtt_topic: Template::parse(topic).unwrap(),
        qos,
        retain,
        dead_letter_topic: "device-commands.dlq".into(),
        rate_limit: None,
        properties: Vec::new(),
    }
}

/// Every kind of record a topic template cannot publish, and what the good ones become.
#[test]
fn rendering_table() {
    let json = br#"{"device":{"id":"f2-e4fd45f654be","n":7,"flag":true,"obj":{},"slash":"a/b","null":null}}"#;
    type Case<'a> = (&'a str, Option<&'a str>, Headers<'a>, &'a [u8], Result<&'a str, Reason>);
    let cases: &[Case] = &[
        ("cmnd/{key}/set", Some("f2-1"), &[], b"{}", Ok("cmnd/f2-1/set")),
        ("cmnd/{topic}/{partition}", None, &[], b"", Ok("cmnd/device-commands/3")),
        ("cmnd/{header.site}/{key}", Some("k"), &[("site", b"J1")], b"", Ok("cmnd/J1/k")),
        ("cmnd/{json./device/id}/set", None, &[], json, Ok("cmnd/f2-e4fd45f654be/set")),
        ("cmnd/{json./device/n}-{json./device/flag}", None, &[], json, Ok("cmnd/7-true")),
        // Resolves to nothing.
        ("cmnd/{key}/set", None, &[], b"", Err(Reason::Missing)),
        ("cmnd/{key}/set", Some(""), &[], b"", Err(Reason::Missing)),
        ("cmnd/{header.site}", Some("k"), &[], b"", Err(Reason::Missing)),
        ("cmnd/{header.site}", Some("k"), &[("site", b"")], b"", Err(Reason::Missing)),
        ("cmnd/{json./device/missing}", None, &[], json, Err(Reason::Missing)),
        ("cmnd/{json./device/null}", None, &[], json, Err(Reason::Missing)),
        ("cmnd/{json./device/id}", None, &[], b"not json", Err(Reason::Missing)),
        // Not a topic MQTT can publish to, or another topic than meant.
        ("cmnd/{key}/set", Some("a/b"), &[], b"", Err(Reason::InvalidTopic)),
        ("cmnd/{key}/set", Some("+"), &[], b"", Err(Reason::InvalidTopic)),
        ("cmnd/{key}/set", Some("a#"), &[], b"", Err(Reason::InvalidTopic)),
        ("cmnd/{key}/set", Some("a\0b"), &[], b"", Err(Reason::InvalidTopic)),
        ("{key}/set", Some("$SYS"), &[], b"", Err(Reason::InvalidTopic)),
        ("cmnd/{json./device/slash}", None, &[], json, Err(Reason::InvalidTopic)),
        ("cmnd/{json./device/obj}", None, &[], json, Err(Reason::InvalidTopic)),
    ];
    for (template, key, headers, payload, want) in cases {
        let d = downlink(template, Setting::Fixed(1), Setting::Fixed(false));
        let got = render(&d, &record(*key, headers, payload), 1 << 20, true);
        match (got, want) {
            (Ok(p), Ok(t)) => assert_eq!(p.topic, *t, "{template} {key:?}"),
            (Err(e), Err(kind)) => {
                assert_eq!(e.kind, *kind, "{template} {key:?}: {}", e.detail);
                assert!(!e.detail.is_empty());
            }
            (got, want) => panic!("{template} {key:?}: got {got:?}, want {want:?}"),
        }
    }
    // A key that is not UTF-8.
    let mut r = record(None, &[], b"");
    r.key = Some(Bytes::from_static(&[0xff, 0xfe]));
    let d = downlink("cmnd/{key}", Setting::Fixed(0), Setting::Fixed(false));
    assert_eq!(render(&d, &r, 1 << 20, true).unwrap_err().kind, Reason::InvalidTopic);
    // A topic over MQTT's 65,535 bytes.
    let long = "x".repeat(70_000);
    let d = downlink("cmnd/{key}", Setting::Fixed(0), Setting::Fixed(false));
    assert_eq!(render(&d, &record(Some(&long), &[], b""), usize::MAX, true).unwrap_err().kind, Reason::InvalidTopic);
    // A packet over the limit.
    let d = downlink("cmnd/{key}", Setting::Fixed(0), Setting::Fixed(false));
    let e = render(&d, &record(Some("k"), &[], &[b'x'; 2000]), 1024, true).unwrap_err();
    assert_eq!(e.kind, Reason::TooLarge, "{}", e.detail);
}

#[test]
fn qos_and_retain_from_headers() {
    let d = downlink("c/{key}", Setting::Header("qos".into()), Setting::Header("retain".into()));
    let ok = render(&d, &record(Some("k"), &[("qos", b"2"), ("retain", b"true")], b""), 1 << 20, false).unwrap();
    assert_eq!((ok.qos, ok.retain), (2, true));
    let ok = render(&d, &record(Some("k"), &[("qos", b" 0 "), ("retain", b"0")], b""), 1 << 20, false).unwrap();
    assert_eq!((ok.qos, ok.retain), (0, false));
    let cases: [(Headers, Reason); 4] = [
        (&[("retain", b"true")], Reason::Missing),
        (&[("qos", b"1"), ("retain", b"maybe")], Reason::InvalidSetting),
        (&[("qos", b"3"), ("retain", b"false")], Reason::InvalidSetting),
        (&[("qos", b"1")], Reason::Missing),
    ];
    for (headers, kind) in cases {
        assert_eq!(render(&d, &record(Some("k"), headers, b""), 1 << 20, false).unwrap_err().kind, kind, "{headers:?}");
    }
}

/// The uplink's header names, read backwards.
#[test]
fn headers_become_mqtt5_properties() {
    let r = record(
        Some("k"),
        &[
            ("mqtt_content_type", b"application/json"),
            ("mqtt_payload_format", b"utf-8"),
            ("mqtt_response_topic", b"reply/k"),
            ("mqtt_correlation_data", &[0, 159, 1]),
            ("trace", b"abc"),
            ("mqtt_user_device_id", b"spoof"),
            ("binary", &[0xff]),
            ("trace", b"def"),
        ],
        b"{}",
    );
    let p = properties(&r);
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.payload_format, Some(1));
    assert_eq!(p.response_topic.as_deref(), Some("reply/k"));
    assert_eq!(p.correlation_data.as_deref(), Some(&[0u8, 159, 1][..]));
    let user: Vec<(&str, &str)> = p.user.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(user, [("trace", "abc"), ("device_id", "spoof"), ("trace", "def")]);
    // Under 3.1.1 nothing is mapped.
    let d = downlink("c/{key}", Setting::Fixed(1), Setting::Fixed(false));
    assert!(render(&d, &r, 1 << 20, false).unwrap().properties.is_empty());
    // A UTF-8 payload format over bytes that are not UTF-8 is left out (the broker would drop it).
    let mut bad = r.clone();
    bad.payload = Bytes::from_static(&[0xff]);
    assert_eq!(properties(&bad).payload_format, None);
}

/// The reverse of the uplink's mapping gives back what the uplink wrote.
#[test]
fn uplink_headers_round_trip() {
    use crate::core::envelope::user_property_header;
    for name in ["plain", "device_id", "mqtt_topic", "route"] {
        let header = user_property_header(name);
        let r = record(Some("k"), &[(&header, b"v")], b"");
        assert_eq!(properties(&r).user, [(name.to_string(), "v".to_string())], "{name} as {header}");
    }
}

#[test]
fn dead_letter_headers_keep_the_original_ones() {
    let r = record(Some("a/b"), &[("trace", b"abc")], b"{}");
    let d = downlink("c/{key}", Setting::Fixed(1), Setting::Fixed(false));
    let why = render(&d, &r, 1 << 20, true).unwrap_err();
    let h = dead_letter_headers("commands", &r, &why);
    let get =
        |n: &str| h.iter().find(|(k, _)| k == n).and_then(|(_, v)| v.clone()).map(|v| String::from_utf8(v).unwrap());
    assert_eq!(get("trace").as_deref(), Some("abc"));
    assert!(get("dlq_reason").unwrap().starts_with("invalid_topic: {key} is `a/b`"), "{:?}", get("dlq_reason"));
    assert_eq!(get("downlink").as_deref(), Some("commands"));
    assert_eq!(get("kafka_topic").as_deref(), Some("device-commands"));
    assert_eq!(get("kafka_partition").as_deref(), Some("3"));
    assert_eq!(get("kafka_offset").as_deref(), Some("41"));
}

#[test]
fn invalid_templates_are_refused_when_read() {
    for (bad, why) in [
        ("", "is empty"),
        ("cmnd/+/set", "wildcard"),
        ("cmnd/#", "wildcard"),
        ("$SYS/{key}", "starts with '$'"),
        ("cmnd/{key", "unclosed"),
        ("cmnd/{nope}", "not a placeholder"),
        ("cmnd/{json.device}", "JSON Pointer"),
        ("cmnd/{}", "empty placeholder"),
    ] {
        let err = Template::parse(bad).unwrap_err();
        assert!(err.contains(why), "{bad:?}: {err}");
    }
}
