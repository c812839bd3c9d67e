//! `edubus.toml` overridden by `EDUBUS_*` variables: which deployment the commands run on and
//! how the server is set up. With nothing set, the embedded deployment in `--data`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use edubus_flows::FlowConfig;
use edubus_http::{HttpConfig, WebhookConfig};
use serde::Deserialize;

/// The file read when neither `--config` nor `EDUBUS_CONFIG` names one (if it exists).
pub const DEFAULT_FILE: &str = "edubus.toml";

/// The configuration of a deployment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// PostgreSQL event store (`EDUBUS_POSTGRES_URL`); with `redis_url`, the production
    /// deployment.
    #[serde(default)]
    pub postgres_url: Option<String>,
    /// Redis Streams transport (`EDUBUS_REDIS_URL`).
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Partitions every stream is split into (`EDUBUS_PARTITIONS`, default 16); fixed once a
    /// production deployment has started.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Prefix of the Redis keys (`EDUBUS_REDIS_PREFIX`, default `edubus`).
    #[serde(default = "default_prefix")]
    pub redis_prefix: String,
    /// Transport entries older than this are trimmed by `edubus serve` (`EDUBUS_RETENTION`,
    /// `7d`, `12h`); unset keeps them (the embedded log is also the event store).
    #[serde(default, with = "duration_opt")]
    pub retention: Option<Duration>,
    /// The HTTP gateway (`[http]`).
    #[serde(default)]
    pub http: HttpConfig,
    /// Webhook subscriptions run by `edubus serve` (`[[webhook]]`).
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<WebhookConfig>,
    /// The reference flows `edubus serve` runs (`[flows]`).
    #[serde(default)]
    pub flows: FlowsConfig,
}

/// The `[flows]` table: whether `edubus serve` runs the reference flows, and their settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowsConfig {
    /// Run the flows' subscriptions (`EDUBUS_FLOWS`, default true; `--no-flows` overrides).
    pub enabled: bool,
    /// Distinct days absent at which `attendance.threshold_breached` is published
    /// (`EDUBUS_ABSENCE_THRESHOLD`, default 10).
    pub absence_threshold: u32,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            absence_threshold: FlowConfig::default().absence_threshold,
        }
    }
}

impl FlowsConfig {
    /// The flows' settings, or `None` when they are disabled.
    pub fn flow_config(&self) -> Option<FlowConfig> {
        self.enabled.then(|| FlowConfig {
            absence_threshold: self.absence_threshold,
            ..FlowConfig::default()
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            postgres_url: None,
            redis_url: None,
            partitions: default_partitions(),
            redis_prefix: default_prefix(),
            retention: None,
            http: HttpConfig::default(),
            webhooks: Vec::new(),
            flows: FlowsConfig::default(),
        }
    }
}

fn default_partitions() -> u32 {
    16
}

fn default_prefix() -> String {
    "edubus".into()
}

/// Where the production deployment's servers are, when configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductionUrls {
    /// PostgreSQL.
    pub postgres: String,
    /// Redis.
    pub redis: String,
}

impl Config {
    /// Reads `file` (or `edubus.toml` in the working directory when it exists), then applies
    /// the `EDUBUS_*` variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let path = file
            .map(Path::to_path_buf)
            .or_else(|| Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.exists()));
        let mut config = match &path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the configuration {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid configuration {}", path.display()))?
            }
            None => Self::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.check()?;
        Ok(config)
    }

    /// Applies `EDUBUS_*` overrides read through `var`.
    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(v) = var("EDUBUS_POSTGRES_URL") {
            self.postgres_url = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = var("EDUBUS_REDIS_URL") {
            self.redis_url = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = var("EDUBUS_PARTITIONS") {
            self.partitions = v
                .parse()
                .with_context(|| format!("EDUBUS_PARTITIONS=`{v}` is not a whole number"))?;
        }
        if let Some(v) = var("EDUBUS_REDIS_PREFIX") {
            self.redis_prefix = v;
        }
        if let Some(v) = var("EDUBUS_RETENTION") {
            self.retention = Some(
                crate::cli::common::parse_duration(&v)
                    .map_err(|e| anyhow::anyhow!("EDUBUS_RETENTION: {e}"))?,
            );
        }
        if let Some(v) = var("EDUBUS_FLOWS") {
            self.flows.enabled = match v.as_str() {
                "true" | "1" | "on" => true,
                "false" | "0" | "off" => false,
                _ => bail!("EDUBUS_FLOWS=`{v}` is not a boolean (true or false)"),
            };
        }
        if let Some(v) = var("EDUBUS_ABSENCE_THRESHOLD") {
            self.flows.absence_threshold = v
                .parse()
                .with_context(|| format!("EDUBUS_ABSENCE_THRESHOLD=`{v}` is not a whole number"))?;
        }
        Ok(())
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.flows.absence_threshold == 0 {
            bail!("[flows] absence_threshold must be at least 1 day");
        }
        if self.partitions == 0 || self.partitions > 4096 {
            bail!(
                "partitions must be between 1 and 4096, not {}",
                self.partitions
            );
        }
        match (&self.postgres_url, &self.redis_url) {
            (Some(_), None) => bail!(
                "postgres_url is set but redis_url is not: the production deployment needs both \
                 (unset both for the embedded one)"
            ),
            (None, Some(_)) => bail!(
                "redis_url is set but postgres_url is not: the production deployment needs both \
                 (unset both for the embedded one)"
            ),
            _ => Ok(()),
        }
    }

    /// The production servers, when both are configured.
    pub fn production(&self) -> Option<ProductionUrls> {
        Some(ProductionUrls {
            postgres: self.postgres_url.clone()?,
            redis: self.redis_url.clone()?,
        })
    }
}

/// A URL with its password replaced, for printing.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

mod duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| crate::cli::common::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::{Config, redact_url};

    #[test]
    fn file_values_are_overridden_by_the_environment() {
        let mut config: Config = toml::from_str(
            "postgres_url = \"postgres://a\"\nredis_url = \"redis://b\"\npartitions = 8\nretention = \"7d\"\n[http]\nlisten = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        assert_eq!(config.partitions, 8);
        assert_eq!(
            config.retention,
            Some(std::time::Duration::from_secs(7 * 86_400))
        );
        config
            .apply_env(|name| (name == "EDUBUS_PARTITIONS").then(|| "32".to_owned()))
            .unwrap();
        assert_eq!(config.partitions, 32);
        assert_eq!(config.production().unwrap().redis, "redis://b");
        assert_eq!(config.http.listen.port(), 9000);
    }

    #[test]
    fn webhooks_are_read_from_webhook_tables() {
        let config: Config = toml::from_str(
            "[[webhook]]\nname = \"grades\"\ntypes = [\"grading.updated\"]\nurl = \"http://h/e\"\n\
             [[webhook]]\nname = \"attendance\"\ntypes = [\"attendance.marked\"]\nurl = \"http://h/a\"\nordered = false\n",
        )
        .unwrap();
        let names: Vec<_> = config.webhooks.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["grades", "attendance"]);
        assert!(!config.webhooks[1].ordered);
        assert!(Config::default().webhooks.is_empty());
    }

    #[test]
    fn flows_run_by_default_and_are_configured_by_the_flows_table() {
        let default = Config::default();
        assert_eq!(
            default.flows.flow_config().map(|f| f.absence_threshold),
            Some(10)
        );
        let mut config: Config =
            toml::from_str("[flows]\nenabled = false\nabsence_threshold = 3\n").unwrap();
        assert!(config.flows.flow_config().is_none());
        config
            .apply_env(|name| match name {
                "EDUBUS_FLOWS" => Some("true".to_owned()),
                "EDUBUS_ABSENCE_THRESHOLD" => Some("5".to_owned()),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            config.flows.flow_config().map(|f| f.absence_threshold),
            Some(5)
        );
        assert!(toml::from_str::<Config>("[flows]\nthreshold = 3\n").is_err());
        config.flows.absence_threshold = 0;
        assert!(config.check().is_err());
    }

    #[test]
    fn half_a_production_deployment_is_refused() {
        let mut config = Config::default();
        config
            .apply_env(|name| (name == "EDUBUS_REDIS_URL").then(|| "redis://x".to_owned()))
            .unwrap();
        let error = config.check().unwrap_err().to_string();
        assert!(error.contains("postgres_url is not"), "{error}");
        assert!(
            toml::from_str::<Config>("redis = 1").is_err(),
            "unknown keys are refused"
        );
        assert!(Config::default().check().is_ok());
    }

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
