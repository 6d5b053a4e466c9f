//! VM selection rules, resolved against the inventory at run time so that new VMs are picked up.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::backend::VmSummary;
use crate::ids::{InstanceUuid, VcenterId};
use crate::vcenter::FieldError;

/// The VMs one job takes from one vCenter.
///
/// A VM is selected when it is listed in `vms` (by instance UUID), or lies in (or below) one of
/// `folders`, or its name matches one of `name_patterns` — and matches none of `exclude` (name
/// patterns or instance UUIDs). An entry with no rule at all selects nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSelection {
    /// The vCenter.
    pub vcenter_id: VcenterId,
    /// Explicit VMs by instance UUID.
    #[serde(default)]
    pub vms: Vec<InstanceUuid>,
    /// VM folder paths below the datacenter's VM folder, e.g. `prod/web`.
    #[serde(default)]
    pub folders: Vec<String>,
    /// Name patterns with `*` and `?`, e.g. `web-*`.
    #[serde(default)]
    pub name_patterns: Vec<String>,
    /// Name patterns or instance UUIDs to leave out.
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl VmSelection {
    pub(crate) fn validate(&self, at: &str, errors: &mut Vec<FieldError>) {
        let total = self.vms.len() + self.folders.len() + self.name_patterns.len();
        if total == 0 {
            errors.push(FieldError::new(
                at,
                "selects nothing: give vms, folders or name_patterns",
            ));
        }
        if total + self.exclude.len() > 1000 {
            errors.push(FieldError::new(at, "at most 1000 rules per vCenter"));
        }
        let lists = [
            ("folders", &self.folders),
            ("name_patterns", &self.name_patterns),
            ("exclude", &self.exclude),
        ];
        for (name, list) in lists {
            for (i, item) in list.iter().enumerate() {
                if item.is_empty()
                    || item.chars().count() > 512
                    || item.chars().any(char::is_control)
                {
                    errors.push(FieldError::new(
                        format!("{at}.{name}[{i}]"),
                        "must be 1-512 characters without control characters",
                    ));
                }
            }
        }
    }

    /// Whether the VM is selected.
    #[must_use]
    pub fn selects(&self, vm: &VmSummary) -> bool {
        let included = self.vms.contains(&vm.instance_uuid)
            || self.folders.iter().any(|f| folder_contains(f, &vm.folder))
            || self.name_patterns.iter().any(|p| glob(p, &vm.name));
        let excluded = self
            .exclude
            .iter()
            .any(|e| e.eq_ignore_ascii_case(vm.instance_uuid.as_str()) || glob(e, &vm.name));
        included && !excluded
    }

    /// The selected VMs of an inventory, sorted by name then UUID (a stable order for runs).
    #[must_use]
    pub fn resolve<'a>(&self, inventory: &'a [VmSummary]) -> Vec<&'a VmSummary> {
        let mut out: Vec<_> = inventory.iter().filter(|vm| self.selects(vm)).collect();
        out.sort_by(|a, b| (&a.name, &a.instance_uuid).cmp(&(&b.name, &b.instance_uuid)));
        out
    }
}

fn folder_contains(rule: &str, folder: &str) -> bool {
    let rule = rule.trim_matches('/');
    let folder = folder.trim_matches('/');
    rule.is_empty()
        || folder == rule
        || (folder.starts_with(rule) && folder.as_bytes().get(rule.len()) == Some(&b'/'))
}

/// `*` matches any run of characters, `?` one character; everything else literally.
#[must_use]
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str, folder: &str, uuid: &str) -> VmSummary {
        VmSummary {
            name: name.into(),
            instance_uuid: InstanceUuid::parse(uuid).unwrap(),
            folder: folder.into(),
            ..VmSummary::default()
        }
    }

    #[test]
    fn glob_matches() {
        assert!(glob("web-*", "web-01"));
        assert!(glob("*", ""));
        assert!(glob("w?b*1", "web-01"));
        assert!(!glob("web-*", "db-01"));
        assert!(glob("*a*b*", "xxaxxbxx"));
        assert!(!glob("a", "ab"));
    }

    #[test]
    fn rules_and_exclusions() {
        let u1 = "00000000-0000-4000-8000-000000000001";
        let u2 = "00000000-0000-4000-8000-000000000002";
        let u3 = "00000000-0000-4000-8000-000000000003";
        let inventory = vec![
            vm("web-01", "prod/web", u1),
            vm("web-02", "prod/web", u2),
            vm("db-01", "prod/db", u3),
        ];
        let sel = VmSelection {
            vcenter_id: VcenterId::generate(),
            vms: vec![InstanceUuid::parse(u3).unwrap()],
            folders: vec!["prod/web".into()],
            name_patterns: vec![],
            exclude: vec!["web-02".into()],
        };
        let names: Vec<_> = sel
            .resolve(&inventory)
            .iter()
            .map(|v| v.name.clone())
            .collect();
        assert_eq!(names, ["db-01", "web-01"]);
        assert!(!folder_contains("prod/we", "prod/web"));
        assert!(folder_contains("prod", "prod/web"));
    }
}
