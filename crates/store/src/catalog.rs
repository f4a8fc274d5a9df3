//! Logsets, topics and the webhook's route, in one small JSON file replaced atomically.

use clusteraudit_io::file_error;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StoreError;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Logset {
    pub id: String,
    pub name: String,
    pub created: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Topic {
    pub id: String,
    pub logset_id: String,
    pub name: String,
    pub retention_days: u32,
    pub created: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Contents {
    logsets: Vec<Logset>,
    topics: Vec<Topic>,
    /// The topic the webhook writes to.
    route: Option<String>,
}

pub struct Catalog {
    path: PathBuf,
    contents: Contents,
}

pub const DEFAULT_RETENTION_DAYS: u32 = 30;

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    format!("{prefix}-{}", hex::encode(bytes))
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl Catalog {
    /// Opens the catalog; a new one holds a logset and a topic both named `default`, routed to.
    pub fn open(path: &Path) -> Result<Catalog, StoreError> {
        let contents = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| StoreError::Catalog {
                path: path.into(),
                message: err.to_string(),
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Contents::default(),
            Err(source) => return Err(file_error("reading", path)(source).into()),
        };
        let mut catalog = Catalog {
            path: path.into(),
            contents,
        };
        if catalog.contents.route.is_none() {
            let (logset, _) = catalog.create_logset("default")?;
            let (topic, _) = catalog.create_topic(&logset.id, "default", DEFAULT_RETENTION_DAYS)?;
            catalog.contents.route = Some(topic.id);
            catalog.save()?;
        }
        Ok(catalog)
    }

    fn save(&self) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(&self.contents).expect("the catalog serializes");
        let dir = self.path.parent().unwrap_or(Path::new("."));
        clusteraudit_io::fsutil::write_atomically(dir, &self.path, &bytes)
            .map_err(file_error("replacing", &self.path))?;
        Ok(())
    }

    pub fn logsets(&self) -> &[Logset] {
        &self.contents.logsets
    }

    pub fn topics(&self) -> &[Topic] {
        &self.contents.topics
    }

    pub fn logset(&self, id: &str) -> Result<&Logset, StoreError> {
        self.contents
            .logsets
            .iter()
            .find(|l| l.id == id)
            .ok_or_else(|| StoreError::LogsetNotFound(id.into()))
    }

    pub fn topic(&self, id: &str) -> Result<&Topic, StoreError> {
        self.contents
            .topics
            .iter()
            .find(|t| t.id == id)
            .ok_or_else(|| StoreError::TopicNotFound(id.into()))
    }

    /// Creates a logset, or returns the one of that name (false: it existed).
    pub fn create_logset(&mut self, name: &str) -> Result<(Logset, bool), StoreError> {
        if !valid_name(name) {
            return Err(StoreError::Invalid(format!(
                "logset name {name:?} must be a DNS label (lowercase letters, digits, '-', at most 63)"
            )));
        }
        if let Some(existing) = self.contents.logsets.iter().find(|l| l.name == name) {
            return Ok((existing.clone(), false));
        }
        let logset = Logset {
            id: new_id("ls"),
            name: name.into(),
            created: now(),
        };
        self.contents.logsets.push(logset.clone());
        self.save()?;
        Ok((logset, true))
    }

    pub fn delete_logset(&mut self, id: &str) -> Result<(), StoreError> {
        self.logset(id)?;
        if self.contents.topics.iter().any(|t| t.logset_id == id) {
            return Err(StoreError::LogsetNotEmpty(id.into()));
        }
        self.contents.logsets.retain(|l| l.id != id);
        self.save()
    }

    /// Creates a topic in a logset, or returns the one of that name there (false: it existed).
    pub fn create_topic(
        &mut self,
        logset_id: &str,
        name: &str,
        retention_days: u32,
    ) -> Result<(Topic, bool), StoreError> {
        self.logset(logset_id)?;
        if !valid_name(name) {
            return Err(StoreError::Invalid(format!(
                "topic name {name:?} must be a DNS label (lowercase letters, digits, '-', at most 63)"
            )));
        }
        check_retention(retention_days)?;
        if let Some(existing) = self
            .contents
            .topics
            .iter()
            .find(|t| t.logset_id == logset_id && t.name == name)
        {
            return Ok((existing.clone(), false));
        }
        let topic = Topic {
            id: new_id("tp"),
            logset_id: logset_id.into(),
            name: name.into(),
            retention_days,
            created: now(),
        };
        self.contents.topics.push(topic.clone());
        self.save()?;
        Ok((topic, true))
    }

    pub fn update_topic(
        &mut self,
        id: &str,
        name: Option<&str>,
        retention_days: Option<u32>,
    ) -> Result<Topic, StoreError> {
        if let Some(name) = name
            && !valid_name(name)
        {
            return Err(StoreError::Invalid(format!(
                "topic name {name:?} must be a DNS label"
            )));
        }
        if let Some(days) = retention_days {
            check_retention(days)?;
        }
        let topic = self
            .contents
            .topics
            .iter_mut()
            .find(|t| t.id == id)
            .ok_or_else(|| StoreError::TopicNotFound(id.into()))?;
        if let Some(name) = name {
            topic.name = name.into();
        }
        if let Some(days) = retention_days {
            topic.retention_days = days;
        }
        let updated = topic.clone();
        self.save()?;
        Ok(updated)
    }

    pub fn delete_topic(&mut self, id: &str) -> Result<(), StoreError> {
        self.topic(id)?;
        if self.contents.route.as_deref() == Some(id) {
            return Err(StoreError::TopicInUse(id.into()));
        }
        self.contents.topics.retain(|t| t.id != id);
        self.save()
    }

    pub fn route(&self) -> &str {
        self.contents.route.as_deref().unwrap_or_default()
    }

    pub fn set_route(&mut self, topic_id: &str) -> Result<(), StoreError> {
        self.topic(topic_id)?;
        self.contents.route = Some(topic_id.into());
        self.save()
    }
}

fn check_retention(days: u32) -> Result<(), StoreError> {
    if (1..=3650).contains(&days) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "retentionDays {days} must be between 1 and 3650"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_catalog_routes_to_a_default_topic_and_creation_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        let mut catalog = Catalog::open(&path).unwrap();
        let route = catalog.route().to_string();
        let default = catalog.topic(&route).unwrap().clone();
        assert_eq!(default.name, "default");
        assert_eq!(catalog.logset(&default.logset_id).unwrap().name, "default");

        let (logset, created) = catalog.create_logset("k8s-audit").unwrap();
        assert!(created);
        let (again, created) = catalog.create_logset("k8s-audit").unwrap();
        assert!(!created);
        assert_eq!(again, logset);
        let (topic, _) = catalog
            .create_topic(&logset.id, "cluster-audit", 7)
            .unwrap();
        let (same, created) = catalog
            .create_topic(&logset.id, "cluster-audit", 30)
            .unwrap();
        assert!(!created);
        assert_eq!(same.id, topic.id);

        assert!(matches!(
            catalog.delete_logset(&logset.id),
            Err(StoreError::LogsetNotEmpty(_))
        ));
        assert!(matches!(
            catalog.delete_topic(&route),
            Err(StoreError::TopicInUse(_))
        ));
        assert!(matches!(
            catalog.create_topic(&logset.id, "Bad_Name", 7),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            catalog.create_topic(&logset.id, "t", 0),
            Err(StoreError::Invalid(_))
        ));

        // It survives a reopen.
        drop(catalog);
        let mut catalog = Catalog::open(&path).unwrap();
        assert_eq!(catalog.route(), route);
        catalog.set_route(&topic.id).unwrap();
        catalog.delete_topic(&route).unwrap();
        assert_eq!(catalog.topics().len(), 1);
    }
}
