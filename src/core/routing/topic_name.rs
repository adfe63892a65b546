//! Kafka's rules for topic names, for the config (fixed topics, dead-letter topics) and the topic
//! templates (names rendered per message) alike. Pure.

/// A character Kafka allows in a topic name.
pub fn kafka_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Kafka's rules for topic names (`org.apache.kafka.common.internals.Topic.validate`).
pub fn check_kafka_topic(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name == "." || name == ".." {
        return Err("cannot be '.' or '..'".into());
    }
    if name.len() > 249 {
        return Err("is longer than 249 characters".into());
    }
    if !name.chars().all(kafka_topic_char) {
        return Err("contains a character other than letters, digits, '.', '_' and '-'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_name_rules_table() {
        let long = "t".repeat(250);
        let cases: &[(&str, bool)] = &[
            ("raw_iot_data", true),
            ("iot.door-sensors", true),
            ("", false),
            (".", false),
            ("..", false),
            ("has space", false),
            ("ünïcode", false),
            (&long, false),
            (&long[..249], true),
        ];
        for (name, ok) in cases {
            assert_eq!(check_kafka_topic(name).is_ok(), *ok, "{name:?}");
        }
    }
}
