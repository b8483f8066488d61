//! Istio resources in, validated typed model out.
//!
//! `weft control` takes Istio YAML (`networking.istio.io` v1/v1beta1/v1alpha3 and
//! `security.istio.io` v1/v1beta1). [`parse_yaml`] turns a (multi-document) file into
//! [`Resource`]s whose [`Spec`] is typed and checked; [`from_json`] reloads one stored resource.
//! Errors name the file, the resource and the field path, and every error of a file is reported
//! at once. Istio fields that Weft accepts but does not apply yet are listed per resource in
//! [`Resource::not_applied`]; fields that are not part of Istio's API are errors.
#![forbid(unsafe_code)]

mod conflict;
mod kinds;
mod meta;
mod parse;
pub mod registry;
pub mod spec;
mod walk;

use std::fmt;

pub use conflict::{qualify_host, resolve_virtual_services, Conflict, HostKey, Resolved};
pub use meta::{Key, Kind, ObjectMeta, Resource, Spec, TENANT_LABEL};
pub use parse::{from_json, parse_yaml};
pub use spec::*;
pub use walk::parse_duration;

/// One problem in one resource. Displays as `file: resource: field: message`, e.g.
/// `shop.yaml: VirtualService default/reviews: spec.http[0].route[1].weight: must be between 0 and 100`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    /// The file (or other source, e.g. `store`) the resource came from.
    pub file: String,
    /// `Kind namespace/name`, or `document N` (1-based, with the kind when known) for a
    /// document without a usable name.
    pub resource: String,
    /// The field path (`spec.http[0].route[1].weight`); empty for whole-document problems.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file)?;
        if !self.resource.is_empty() {
            write!(f, "{}: ", self.resource)?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a file (never empty when returned as an error). Displays one per line.
#[derive(Debug, Clone, PartialEq, Eq, Default, thiserror::Error)]
pub struct Errors(pub Vec<Error>);

impl Errors {
    pub fn iter(&self) -> std::slice::Iter<'_, Error> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl IntoIterator for Errors {
    type Item = Error;
    type IntoIter = std::vec::IntoIter<Error>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests;
