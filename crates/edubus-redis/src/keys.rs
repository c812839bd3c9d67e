//! Key names. A partition's keys carry the hash tag `{p<N>}`, so they share a cluster slot.

/// Builds the keys of one deployment prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The entries of `stream` in `partition`.
    pub(crate) fn stream(&self, stream: &str, partition: u32) -> String {
        format!("{}:{{p{partition}}}:s:{stream}", self.prefix)
    }

    /// The stream name back from a stream key of this prefix.
    pub(crate) fn stream_name<'a>(&self, key: &'a str) -> Option<&'a str> {
        let rest = key
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{p")?;
        let (_, rest) = rest.split_once("}:s:")?;
        Some(rest)
    }

    pub(crate) fn lease(&self, subscription: &str, partition: u32) -> String {
        format!("{}:{{p{partition}}}:lease:{subscription}", self.prefix)
    }

    pub(crate) fn epoch(&self, subscription: &str, partition: u32) -> String {
        format!("{}:{{p{partition}}}:epoch:{subscription}", self.prefix)
    }

    pub(crate) fn replay(&self, subscription: &str, partition: u32) -> String {
        format!("{}:{{p{partition}}}:replay:{subscription}", self.prefix)
    }

    /// The ids of events the subscription settled in `partition`, scored by the time (ms).
    pub(crate) fn inbox(&self, subscription: &str, partition: u32) -> String {
        format!("{}:{{p{partition}}}:inbox:{subscription}", self.prefix)
    }

    pub(crate) fn subscriptions(&self) -> String {
        format!("{}:subs", self.prefix)
    }

    pub(crate) fn members(&self, subscription: &str) -> String {
        format!("{}:members:{subscription}", self.prefix)
    }

    pub(crate) fn failures(&self, subscription: &str) -> String {
        format!("{}:fail:{subscription}", self.prefix)
    }

    pub(crate) fn dlq(&self, subscription: &str) -> String {
        format!("{}:dlq:{subscription}", self.prefix)
    }

    pub(crate) fn dlq_seq(&self) -> String {
        format!("{}:dlq:seq", self.prefix)
    }

    pub(crate) fn dlq_index(&self) -> String {
        format!("{}:dlq:index", self.prefix)
    }

    pub(crate) fn dlq_replayed(&self) -> String {
        format!("{}:dlq:replayed", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn stream_keys_round_trip_and_share_the_partition_tag() {
        let keys = Keys::new("edubus");
        let key = keys.stream("huleedu.essay.spellcheck.completed.v1", 7);
        assert_eq!(key, "edubus:{p7}:s:huleedu.essay.spellcheck.completed.v1");
        assert_eq!(
            keys.stream_name(&key),
            Some("huleedu.essay.spellcheck.completed.v1")
        );
        assert!(keys.lease("sub", 7).contains("{p7}"));
        assert!(keys.replay("sub", 7).contains("{p7}"));
        assert!(keys.inbox("sub", 7).contains("{p7}"));
        assert_eq!(keys.stream_name("other:{p7}:s:x"), None);
    }
}
