//! Placing: linking verified content under its plain name, or finding it
//! there, and moving an older version to its version name first.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use ferry_common::name;
use ferry_common::protocol::Sha256;

use super::staging::Staged;
use super::sync::sync_dir;
use super::version_name::version_name;
use super::{Repository, RepositoryError, hex, io_err};

/// What the catalog knows about a name in the repository: the catalog
/// path (text form) whose version it holds, and that version's content.
pub type Owner = (String, Sha256);

/// Where committed content ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Newly linked under `stored_as` (relative to the repository root, as
    /// bytes). `replaced`: the catalogued version that held the plain name
    /// before, and its version name now.
    Stored {
        stored_as: Vec<u8>,
        replaced: Option<Replaced>,
    },
    /// The same content already sits at `stored_as`.
    AlreadyThere { stored_as: Vec<u8> },
}

/// A catalogued version moved from the plain name to its version name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    /// Its content.
    pub sha256: Sha256,
    /// Its version name (relative to the repository root, as bytes).
    pub stored_as: Vec<u8>,
}

impl Placement {
    /// Where the content is, relative to the repository root.
    pub fn stored_as(&self) -> &[u8] {
        match self {
            Self::Stored { stored_as, .. } | Self::AlreadyThere { stored_as } => stored_as,
        }
    }
}

impl Repository {
    /// Links verified, fsynced content under its final name, or finds the
    /// same content already there, and fsyncs the directory. `known`
    /// answers, for a stored name (text form), which catalogued version it
    /// holds, if the journal knows (else the file is hashed).
    pub fn place(
        &self,
        staged: &Staged,
        sha256: &Sha256,
        known: impl Fn(&str) -> Option<Owner>,
    ) -> Result<Placement, RepositoryError> {
        let placement = self.link(staged, sha256, known)?;
        self.sync_parent(placement.stored_as())?;
        Ok(placement)
    }

    /// [`Repository::place`] without the final directory fsync: a batch
    /// links all its files, then makes the links durable together with
    /// [`Repository::sync_parents`] before anything is acknowledged.
    ///
    /// The content goes under the plain name. If that name holds an older
    /// version of the same path, the older version is first linked under
    /// its version name and that link made durable, then the new content
    /// replaces the plain name (a rename: atomic). If it holds what another
    /// path stored there (a name that looks like a version name), the new
    /// content takes its own version name instead. The caller must make sure
    /// no other placement of the same path runs at the same time.
    pub fn link(
        &self,
        staged: &Staged,
        sha256: &Sha256,
        known: impl Fn(&str) -> Option<Owner>,
    ) -> Result<Placement, RepositoryError> {
        let key = &staged.key;
        let catalog_path = key.catalog_path();
        let plain = key.plain_name();
        let target = self.root.join(OsStr::from_bytes(&plain));
        let dir = target.parent().unwrap_or(&self.root).to_owned();
        self.create_dirs(&dir)?;
        match std::fs::hard_link(&staged.path, &target) {
            Ok(()) => {
                return Ok(Placement::Stored {
                    stored_as: plain,
                    replaced: None,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("link", &target)(e)),
        }
        let owner = known(&name::encode(&plain));
        if let Some((path, _)) = &owner
            && *path != catalog_path
        {
            // Another path's version sits under this name: leave it.
            return self.link_version(&staged.path, &plain, sha256, &catalog_path, &known);
        }
        let there = match &owner {
            Some((_, sha)) => *sha,
            None => hash_file(&target)?,
        };
        if there == *sha256 {
            return Ok(Placement::AlreadyThere { stored_as: plain });
        }
        // An older version holds the plain name: give it its version name,
        // durably, before the plain name changes.
        let kept = match self.link_version(&target, &plain, &there, &catalog_path, &known)? {
            Placement::Stored { stored_as, .. } | Placement::AlreadyThere { stored_as } => {
                stored_as
            }
        };
        sync_dir(&dir)?;
        let fresh = dir.join(format!(".ferry-{}.new", hex(sha256)));
        match std::fs::remove_file(&fresh) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &fresh)(e)),
        }
        std::fs::hard_link(&staged.path, &fresh).map_err(io_err("link", &fresh))?;
        std::fs::rename(&fresh, &target).map_err(io_err("rename", &target))?;
        // A rename between two links of one file (the retry of a placement
        // whose rename had been done) leaves both in place.
        match std::fs::remove_file(&fresh) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &fresh)(e)),
        }
        Ok(Placement::Stored {
            stored_as: plain,
            replaced: owner.map(|(_, sha256)| Replaced {
                sha256,
                stored_as: kept,
            }),
        })
    }

    /// Links `source` (holding `sha256`, a version of `catalog_path`) under
    /// its version name beside `plain`: the short one, or the one with the
    /// whole hash if the short one holds something else. A name that already
    /// holds this version (a repeated placement) is taken as it is.
    fn link_version(
        &self,
        source: &Path,
        plain: &[u8],
        sha256: &Sha256,
        catalog_path: &str,
        known: &impl Fn(&str) -> Option<Owner>,
    ) -> Result<Placement, RepositoryError> {
        let mut last = None;
        for full in [false, true] {
            let stored_as = version_name(plain, sha256, full);
            let target = self.root.join(OsStr::from_bytes(&stored_as));
            match std::fs::hard_link(source, &target) {
                Ok(()) => {
                    return Ok(Placement::Stored {
                        stored_as,
                        replaced: None,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let ours = match known(&name::encode(&stored_as)) {
                        Some((path, sha)) => path == catalog_path && sha == *sha256,
                        None => hash_file(&target)? == *sha256,
                    };
                    if ours {
                        return Ok(Placement::AlreadyThere { stored_as });
                    }
                    last = Some(target);
                }
                Err(e) => return Err(io_err("link", &target)(e)),
            }
        }
        // Both version names hold other content: only a name made to look
        // like this version's gets here.
        let target = last.unwrap_or_else(|| self.root.join(OsStr::from_bytes(plain)));
        Err(io_err("link", &target)(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "both version names of this content hold other files",
        )))
    }

    /// Creates `dir` and any missing parents, fsyncing each new entry's
    /// parent so the directories survive a crash.
    fn create_dirs(&self, dir: &Path) -> Result<(), RepositoryError> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.create_dirs(parent)?;
        }
        match std::fs::create_dir(dir) {
            Ok(()) => sync_dir(dir.parent().unwrap_or(dir)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_err("create", dir)(e)),
        }
    }
}

fn hash_file(path: &Path) -> Result<Sha256, RepositoryError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(hash.finish().as_ref());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::repository::tests::{key, scratch, sha};

    /// Stages `data` as `path` (mtime `mtime`) and places it, with the
    /// catalog knowing what `catalog` lists (stored name, catalog path,
    /// content); leaves the staging file for the caller.
    fn place_in(
        repo: &Repository,
        path: &[u8],
        data: &[u8],
        mtime: i64,
        catalog: &[(Vec<u8>, String, Sha256)],
    ) -> (Staged, Placement) {
        let mut k = key("", data.len() as u64);
        k.path = path.to_vec();
        k.mtime_ns = mtime;
        let mut staged = repo.stage(k).unwrap();
        staged.write(0, data).unwrap();
        let placed = repo.place(&staged, &sha(data), known_in(catalog)).unwrap();
        (staged, placed)
    }

    /// What the catalog knows, as the journal would answer it: for a stored
    /// name (text form), the catalog path and content `catalog` lists there.
    fn known_in(catalog: &[(Vec<u8>, String, Sha256)]) -> impl Fn(&str) -> Option<Owner> + '_ {
        |name| {
            catalog
                .iter()
                .find(|(stored, ..)| name::encode(stored) == name)
                .map(|(_, path, sha)| (path.clone(), *sha))
        }
    }

    fn read(repo: &Repository, stored_as: &[u8]) -> Vec<u8> {
        std::fs::read(repo.root().join(OsStr::from_bytes(stored_as))).unwrap()
    }

    #[test]
    fn the_plain_name_holds_the_latest_version_and_every_version_is_kept() {
        let (_dir, repo) = scratch();
        let plain = b"s1/spectrum/log.csv".to_vec();
        let mut catalog = Vec::new();
        let mut place = |data: &[u8], mtime: i64| {
            let (staged, placed) = place_in(&repo, b"log.csv", data, mtime, &catalog);
            repo.discard(staged).unwrap();
            // The catalog learns what the journal would.
            if let Placement::Stored {
                stored_as,
                replaced,
            } = &placed
            {
                if let Some(r) = replaced {
                    let moved = catalog.iter_mut().find(|(_, _, s)| *s == r.sha256).unwrap();
                    moved.0 = r.stored_as.clone();
                }
                catalog.push((stored_as.clone(), "spectrum/log.csv".into(), sha(data)));
            }
            placed
        };
        let first = place(b"first, partial", 1);
        assert_eq!(
            first,
            Placement::Stored {
                stored_as: plain.clone(),
                replaced: None
            }
        );
        let second = place(b"first, partial, then whole", 2);
        let first_version = version_name(&plain, &sha(b"first, partial"), false);
        assert_eq!(
            second,
            Placement::Stored {
                stored_as: plain.clone(),
                replaced: Some(Replaced {
                    sha256: sha(b"first, partial"),
                    stored_as: first_version.clone()
                })
            }
        );
        assert_eq!(read(&repo, &plain), b"first, partial, then whole");
        assert_eq!(read(&repo, &first_version), b"first, partial");
        // The same content again is recognised where it is.
        assert_eq!(
            place(b"first, partial, then whole", 3),
            Placement::AlreadyThere {
                stored_as: plain.clone()
            }
        );
        assert_eq!(tree_of(&repo).len(), 2);
    }

    #[test]
    fn a_placement_cut_short_at_any_step_is_completed_by_the_retry() {
        let (_dir, repo) = scratch();
        let plain = b"s1/spectrum/a.bin".to_vec();
        let old_version = version_name(&plain, &sha(b"old"), false);
        let (staged, _) = place_in(&repo, b"a.bin", b"old", 1, &[]);
        repo.discard(staged).unwrap();
        let catalog = vec![(plain.clone(), "spectrum/a.bin".to_owned(), sha(b"old"))];
        let moved = Placement::Stored {
            stored_as: plain.clone(),
            replaced: Some(Replaced {
                sha256: sha(b"old"),
                stored_as: old_version.clone(),
            }),
        };
        // Killed after the old version got its version name, before the
        // rename: the retry finds the name holding it and goes on.
        std::fs::hard_link(
            repo.root().join(OsStr::from_bytes(&plain)),
            repo.root().join(OsStr::from_bytes(&old_version)),
        )
        .unwrap();
        let (staged, placed) = place_in(&repo, b"a.bin", b"new", 2, &catalog);
        assert_eq!(placed, moved);
        assert_eq!(read(&repo, &plain), b"new");
        assert_eq!(read(&repo, &old_version), b"old");
        // Killed after the rename, before the journal: the journal still
        // says the plain name holds the old version; the retry moves the
        // row, and nothing is linked twice.
        let placed = repo
            .place(&staged, &sha(b"new"), known_in(&catalog))
            .unwrap();
        assert_eq!(placed, moved);
        assert_eq!(read(&repo, &plain), b"new");
        assert_eq!(read(&repo, &old_version), b"old");
        repo.discard(staged).unwrap();
        assert_eq!(tree_of(&repo).len(), 2, "{:?}", tree_of(&repo));
    }

    #[test]
    fn a_plain_name_holding_another_paths_version_is_left_alone() {
        let (_dir, repo) = scratch();
        // x.bin's version sits where a file named like it would go.
        let taken = version_name(b"s1/spectrum/x.bin", &sha(b"x1"), false);
        let name = taken.strip_prefix(b"s1/spectrum/".as_slice()).unwrap();
        let (staged, _) = place_in(&repo, name, b"x1", 1, &[]);
        repo.discard(staged).unwrap();
        let catalog = vec![(taken.clone(), "spectrum/x.bin".to_owned(), sha(b"x1"))];
        let (staged, placed) = place_in(&repo, name, b"look-alike", 2, &catalog);
        repo.discard(staged).unwrap();
        assert_eq!(read(&repo, &taken), b"x1");
        assert_eq!(read(&repo, placed.stored_as()), b"look-alike");
        assert_ne!(placed.stored_as(), &taken[..]);
    }

    fn tree_of(repo: &Repository) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                if entry.path().is_dir() {
                    walk(&entry.path(), out);
                } else {
                    out.push(entry.path());
                }
            }
        }
        let mut out = Vec::new();
        walk(repo.root(), &mut out);
        out
    }
}
