//! The catalog of logsets, topics and the webhook's route, in one small JSON file replaced
//! atomically on every change.

use clusteraudit_io::file_error;
use std::path::{Path, PathBuf};

use clusteraudit_store::{
    Catalog, CatalogEdit, Edited, StoreError,
    catalog::{Origin, SystemOrigin},
};

pub struct CatalogFile {
    path: PathBuf,
    catalog: Catalog,
}

impl CatalogFile {
    /// Opens the catalog; a new one holds a logset and a topic both named `default`, routed to.
    pub fn open(path: &Path) -> Result<CatalogFile, StoreError> {
        let catalog = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| StoreError::Catalog {
                location: path.display().to_string(),
                message: err.to_string(),
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Catalog::default(),
            Err(source) => return Err(file_error("reading", path)(source).into()),
        };
        let mut file = CatalogFile {
            path: path.into(),
            catalog,
        };
        file.edit(&CatalogEdit::Initialize)?;
        Ok(file)
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Applies an edit and, when it changed anything, replaces the file before answering.
    pub fn edit(&mut self, edit: &CatalogEdit) -> Result<Edited, StoreError> {
        self.edit_with(edit, &mut SystemOrigin)
    }

    fn edit_with(
        &mut self,
        edit: &CatalogEdit,
        origin: &mut dyn Origin,
    ) -> Result<Edited, StoreError> {
        let mut next = self.catalog.clone();
        let (edited, changed) = next.apply(edit, origin)?;
        if changed {
            let bytes = serde_json::to_vec_pretty(&next).expect("the catalog serializes");
            let dir = self.path.parent().unwrap_or(Path::new("."));
            clusteraudit_io::fsutil::write_atomically(dir, &self.path, &bytes)
                .map_err(file_error("replacing", &self.path))?;
            self.catalog = next;
        }
        Ok(edited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_survives_a_reopen_and_a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        let mut file = CatalogFile::open(&path).unwrap();
        let route = file.catalog().route().to_string();
        let Edited::Logset { logset, .. } = file
            .edit(&CatalogEdit::CreateLogset {
                name: "k8s-audit".into(),
            })
            .unwrap()
        else {
            panic!("a logset")
        };
        let policy: clusteraudit_core::audit::Policy = serde_json::from_str(
            r#"{"apiVersion":"audit.k8s.io/v1","kind":"Policy","rules":[{"level":"Metadata"}]}"#,
        )
        .unwrap();
        let Edited::Policy(set) = file
            .edit(&CatalogEdit::SetPolicy {
                topic_id: route.clone(),
                policy: Box::new(policy),
            })
            .unwrap()
        else {
            panic!("a policy")
        };
        drop(file);
        let mut file = CatalogFile::open(&path).unwrap();
        assert_eq!(file.catalog().route(), route);
        assert_eq!(file.catalog().policy(&route), Some(&set));
        assert_eq!(file.catalog().logset(&logset.id).unwrap().name, "k8s-audit");

        // The directory vanishes under it: the edit fails and the catalog in memory is unchanged.
        let before = file.catalog().clone();
        std::fs::remove_dir_all(dir.path()).unwrap();
        assert!(
            file.edit(&CatalogEdit::CreateLogset {
                name: "other".into()
            })
            .is_err()
        );
        assert_eq!(file.catalog(), &before);
    }
}
