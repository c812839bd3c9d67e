//! Topic templates: how an event's stream (topic) name is derived.
//!
//! A template may use `{name}`, `{version}` and `{context}`; `{name}` alone (the default) gives
//! seed 000's `<context>.<event>` stream keys, `huleedu.{name}.v{version}` gives seed 004's topics.

/// The template used when a context does not set one.
pub const DEFAULT_TEMPLATE: &str = "{name}";

/// Applies `template` to one event version, or says which placeholder is unknown.
pub fn apply(template: &str, name: &str, version: u32, context: &str) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + name.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in topic template `{template}`"))?;
        match &after[..end] {
            "name" => out.push_str(name),
            "version" => out.push_str(&version.to_string()),
            "context" => out.push_str(context),
            other => {
                return Err(format!(
                    "unknown placeholder `{{{other}}}` in topic template `{template}`; \
                     use {{name}}, {{version}} or {{context}}"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `topic` is a usable stream name: ASCII letters, digits, `.`, `_`, `-` and `:`.
pub fn is_valid(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_seed_templates() {
        let t = apply(
            "huleedu.{name}.v{version}",
            "cj_assessment.completed",
            1,
            "x",
        );
        assert_eq!(t.unwrap(), "huleedu.cj_assessment.completed.v1");
        assert_eq!(
            apply("{name}", "attendance.marked", 1, "attendance").unwrap(),
            "attendance.marked"
        );
        assert_eq!(
            apply("{context}", "orders.order.paid", 1, "orders").unwrap(),
            "orders"
        );
    }

    #[test]
    fn rejects_unknown_placeholders() {
        let err = apply("x.{nmae}", "a.b", 1, "c").unwrap_err();
        assert!(err.contains("{nmae}"), "{err}");
        assert!(apply("x.{name", "a.b", 1, "c").is_err());
    }

    #[test]
    fn validates_topic_characters() {
        assert!(is_valid("huleedu.batch.essays.registered.v1"));
        assert!(!is_valid("has space"));
        assert!(!is_valid(""));
    }
}
