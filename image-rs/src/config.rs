//! Applying an image config to a container's OCI runtime spec, as the CRI does.

use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{Process, Spec};

/// Why the image config could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// The image's `User` names a user or group absent from the rootfs.
    #[error("image user {0:?}: no such user or group in the image's /etc/passwd or /etc/group")]
    UnknownUser(String),
    /// Reading the rootfs's user database failed.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Users and groups of an image (`/etc/passwd`, `/etc/group`), for names in `User`.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    users: Vec<(String, u32, u32)>,
    groups: Vec<(String, u32, Vec<String>)>,
}

impl UserDb {
    /// Parse passwd and group file contents (malformed lines are skipped).
    pub fn parse(passwd: &str, group: &str) -> Self {
        let users = passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((
                    f.first()?.to_string(),
                    f.get(2)?.parse().ok()?,
                    f.get(3)?.parse().ok()?,
                ))
            })
            .collect();
        let groups = group
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                let members = f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                Some((f.first()?.to_string(), f.get(2)?.parse().ok()?, members))
            })
            .collect();
        UserDb { users, groups }
    }

    /// Read `etc/passwd` and `etc/group` of a mounted rootfs, resolving symlinks inside
    /// it (missing files: empty). At most 1 MiB of each is read.
    pub fn from_rootfs(rootfs: &Path) -> Result<Self, MergeError> {
        let read = |name: &str| -> Result<String, MergeError> {
            let path = rootfs.join(name);
            let err = |source: std::io::Error| MergeError::Read {
                path: path.clone(),
                source,
            };
            let root = rustix::fs::open(
                rootfs,
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| err(e.into()))?;
            let fd = match rustix::fs::openat2(
                &root,
                name,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
                rustix::fs::ResolveFlags::IN_ROOT | rustix::fs::ResolveFlags::NO_MAGICLINKS,
            ) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => return Ok(String::new()),
                Err(e) => return Err(err(e.into())),
            };
            let mut s = String::new();
            std::fs::File::from(fd)
                .take(1 << 20)
                .read_to_string(&mut s)
                .map_err(err)?;
            Ok(s)
        };
        Ok(UserDb::parse(&read("etc/passwd")?, &read("etc/group")?))
    }

    fn user(&self, name: &str) -> Option<(u32, u32)> {
        self.users.iter().find(|u| u.0 == name).map(|u| (u.1, u.2))
    }

    fn group(&self, name: &str) -> Option<u32> {
        self.groups.iter().find(|g| g.0 == name).map(|g| g.1)
    }

    fn supplementary(&self, user: &str) -> Vec<u32> {
        self.groups
            .iter()
            .filter(|g| g.2.iter().any(|m| m == user))
            .map(|g| g.1)
            .collect()
    }
}

/// Apply `image`'s config to `spec` the way the CRI builds a container spec:
/// * args: when the spec has none, the image's `Entrypoint` + `Cmd`;
/// * env: the image's variables, overridden by the spec's entries of the same name;
/// * user: the image's `User` (`uid`, `uid:gid`, `name`, `name:group`; names looked up in
///   `users`), when the spec still has the default root user;
/// * cwd: the image's `WorkingDir` when the spec's is empty or `/`.
pub fn merge_image_config(
    image: &ImageConfiguration,
    spec: &mut Spec,
    users: &UserDb,
) -> Result<(), MergeError> {
    let Some(cfg) = image.config() else {
        return Ok(());
    };
    let mut process = spec.process().clone().unwrap_or_default();

    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        let mut args: Vec<String> = cfg.entrypoint().clone().unwrap_or_default();
        args.extend(cfg.cmd().clone().unwrap_or_default());
        if !args.is_empty() {
            process.set_args(Some(args));
        }
    }

    if let Some(image_env) = cfg.env() {
        let spec_env = process.env().clone().unwrap_or_default();
        let key = |e: &str| e.split('=').next().unwrap_or(e).to_string();
        let mut merged: Vec<String> = image_env
            .iter()
            .filter(|e| !spec_env.iter().any(|s| key(s) == key(e)))
            .cloned()
            .collect();
        merged.extend(spec_env);
        process.set_env(Some(merged));
    }

    if let Some(user) = cfg.user().as_deref().filter(|u| !u.is_empty()) {
        let u = process.user();
        if u.uid() == 0 && u.gid() == 0 && u.additional_gids().as_ref().is_none_or(|g| g.is_empty())
        {
            apply_user(&mut process, user, users)?;
        }
    }

    if let Some(wd) = cfg.working_dir().as_deref().filter(|w| !w.is_empty()) {
        let cwd = process.cwd();
        if cwd.as_os_str().is_empty() || cwd == Path::new("/") {
            process.set_cwd(PathBuf::from(wd));
        }
    }
    spec.set_process(Some(process));
    Ok(())
}

fn apply_user(process: &mut Process, user: &str, users: &UserDb) -> Result<(), MergeError> {
    let unknown = || MergeError::UnknownUser(user.to_string());
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, default_gid, name) = match u.parse::<u32>() {
        Ok(uid) => {
            let entry = users.users.iter().find(|e| e.1 == uid);
            (uid, entry.map_or(0, |e| e.2), entry.map(|e| e.0.clone()))
        }
        Err(_) => {
            let (uid, gid) = users.user(u).ok_or_else(unknown)?;
            (uid, gid, Some(u.to_string()))
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => users.group(g).ok_or_else(unknown)?,
        },
        None => default_gid,
    };
    let extra = match (g, &name) {
        (None, Some(n)) => users.supplementary(n),
        _ => Vec::new(),
    };
    let mut spec_user = process.user().clone();
    spec_user.set_uid(uid);
    spec_user.set_gid(gid);
    if !extra.is_empty() {
        spec_user.set_additional_gids(Some(extra));
    }
    process.set_user(spec_user);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn image(json: &str) -> ImageConfiguration {
        serde_json::from_str(json).unwrap()
    }

    const BASE: &str = r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":"#;

    #[test]
    fn args_env_cwd_user_from_image() {
        let img = image(&format!(
            "{BASE}{{\"Entrypoint\":[\"/bin/sh\"],\"Cmd\":[\"-c\",\"x\"],\"Env\":[\"PATH=/bin\",\"A=1\"],\"WorkingDir\":\"/w\",\"User\":\"nobody\"}}}}"
        ));
        let mut spec = Spec::default();
        let mut p = spec.process().clone().unwrap();
        p.set_args(None);
        p.set_env(Some(vec!["A=2".into(), "B=3".into()]));
        spec.set_process(Some(p));
        let users = UserDb::parse(
            "root:x:0:0::/:/bin/sh\nnobody:x:65534:65533::/:/bin/sh\n",
            "g:x:7:nobody\n",
        );
        merge_image_config(&img, &mut spec, &users).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/bin/sh", "-c", "x"]);
        assert_eq!(p.env().as_ref().unwrap(), &["PATH=/bin", "A=2", "B=3"]);
        assert_eq!(p.cwd(), Path::new("/w"));
        assert_eq!((p.user().uid(), p.user().gid()), (65534, 65533));
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &[7]);
    }

    #[test]
    fn spec_values_win() {
        let img = image(&format!(
            "{BASE}{{\"Cmd\":[\"img\"],\"WorkingDir\":\"/w\",\"User\":\"5:6\"}}}}"
        ));
        let mut spec = Spec::default();
        let mut p = spec.process().clone().unwrap();
        p.set_args(Some(vec!["mine".into()]));
        p.set_cwd("/mine".into());
        let mut u = p.user().clone();
        u.set_uid(1000);
        p.set_user(u);
        spec.set_process(Some(p));
        merge_image_config(&img, &mut spec, &UserDb::default()).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["mine"]);
        assert_eq!(p.cwd(), Path::new("/mine"));
        assert_eq!(p.user().uid(), 1000);
    }

    #[test]
    fn numeric_user_and_unknown_name() {
        let img = image(&format!("{BASE}{{\"User\":\"5:6\"}}}}"));
        let mut spec = Spec::default();
        merge_image_config(&img, &mut spec, &UserDb::default()).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!((p.user().uid(), p.user().gid()), (5, 6));
        let img = image(&format!("{BASE}{{\"User\":\"ghost\"}}}}"));
        let mut spec = Spec::default();
        assert!(matches!(
            merge_image_config(&img, &mut spec, &UserDb::default()),
            Err(MergeError::UnknownUser(_))
        ));
    }
}
