//! Typed readers for node attributes. A wrong attribute type is an error naming the attribute,
//! never a silent default.

use super::proto::{AttributeProto, NodeProto, attribute_proto::AttributeType};
use super::{WeightFiles, tensor_from_proto};
use crate::error::{Result, bail};
use crate::tensor::Tensor;

/// The attributes of one node.
#[derive(Clone, Copy)]
pub struct Attrs<'a> {
    node: &'a NodeProto,
}

impl<'a> Attrs<'a> {
    /// Wraps a node's attribute list.
    pub fn new(node: &'a NodeProto) -> Attrs<'a> {
        Attrs { node }
    }

    fn get(&self, name: &str, want: AttributeType) -> Result<Option<&'a AttributeProto>> {
        let Some(a) = self.node.attribute.iter().find(|a| a.name.as_deref() == Some(name)) else { return Ok(None) };
        // Old exporters leave `type` unset; then trust the field that is populated.
        if let Some(t) = a.r#type
            && t != want as i32
        {
            bail!(
                "attribute '{name}' has type {:?}, expected {want:?}",
                AttributeType::try_from(t).map(|t| format!("{t:?}")).unwrap_or_else(|_| t.to_string())
            );
        }
        Ok(Some(a))
    }

    /// True when the attribute is present.
    pub fn has(&self, name: &str) -> bool {
        self.node.attribute.iter().any(|a| a.name.as_deref() == Some(name))
    }

    /// An optional int attribute.
    pub fn int_opt(&self, name: &str) -> Result<Option<i64>> {
        Ok(self.get(name, AttributeType::Int)?.map(|a| a.i.unwrap_or(0)))
    }

    /// An int attribute with a default.
    pub fn int(&self, name: &str, default: i64) -> Result<i64> {
        Ok(self.int_opt(name)?.unwrap_or(default))
    }

    /// A float attribute with a default.
    pub fn float(&self, name: &str, default: f32) -> Result<f32> {
        Ok(self.get(name, AttributeType::Float)?.map(|a| a.f.unwrap_or(0.0)).unwrap_or(default))
    }

    /// An optional ints attribute.
    pub fn ints_opt(&self, name: &str) -> Result<Option<Vec<i64>>> {
        Ok(self.get(name, AttributeType::Ints)?.map(|a| a.ints.clone()))
    }

    /// An optional floats attribute.
    pub fn floats_opt(&self, name: &str) -> Result<Option<Vec<f32>>> {
        Ok(self.get(name, AttributeType::Floats)?.map(|a| a.floats.clone()))
    }

    /// A string attribute with a default.
    pub fn string(&self, name: &str, default: &str) -> Result<String> {
        match self.get(name, AttributeType::String)? {
            Some(a) => match std::str::from_utf8(a.s.as_deref().unwrap_or(b"")) {
                Ok(s) => Ok(s.to_string()),
                Err(_) => bail!("attribute '{name}' is not UTF-8"),
            },
            None => Ok(default.to_string()),
        }
    }

    /// An optional strings attribute.
    pub fn strings_opt(&self, name: &str) -> Result<Option<Vec<String>>> {
        Ok(self.get(name, AttributeType::Strings)?.map(|a| a.strings.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect()))
    }

    /// An optional tensor attribute (embedded data only; external data needs the graph loader).
    pub fn tensor_opt(&self, name: &str) -> Result<Option<Tensor>> {
        match self.get(name, AttributeType::Tensor)? {
            Some(a) => match &a.t {
                Some(t) => Ok(Some(tensor_from_proto(t, &mut WeightFiles::new(None))?)),
                None => bail!("attribute '{name}' holds no tensor"),
            },
            None => Ok(None),
        }
    }
}
