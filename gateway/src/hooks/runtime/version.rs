//! Which WIT version serves a component, and the one place that dispatches
//! to that version's host module.
//!
//! Adding a version: a `hooks::v0_x_0` module with its `bindgen!`, its `host`
//! implementation and an `Indices`/`Exports` pair with the same methods, plus
//! one arm per method here. Older versions keep their modules unchanged.

use anyhow::{Context, anyhow};
use wasmtime::Store;
use wasmtime::component::{Component, Instance, InstancePre};

use super::engine::Runtime;
use super::input::ChangeInput;
use super::{CallError, Commit, HostState, MessageTarget, Verdict};
use crate::hooks::outcome::Subject;
use crate::hooks::{v0_1_0, v0_2_0};
use crate::metadata::{MetadataChange, Recorded};
use crate::model::JsonObject;

/// Where a component's hook exports sit, per WIT version.
pub(crate) enum Indices {
    V0_1(v0_1_0::Indices),
    V0_2(v0_2_0::Indices),
}

/// One instance's hook exports, per WIT version.
pub(crate) enum Exports {
    V0_1(v0_1_0::Exports),
    V0_2(v0_2_0::Exports),
}

/// Calls the same method on whichever version an instance speaks.
macro_rules! dispatch {
    ($self:expr, $x:ident => $call:expr) => {
        match $self {
            Exports::V0_1($x) => $call,
            Exports::V0_2($x) => $call,
        }
    };
}

impl Indices {
    /// The newest version the component exports hooks of.
    fn find(pre: &InstancePre<HostState>) -> Option<Self> {
        v0_2_0::Indices::new(pre)
            .map(Self::V0_2)
            .or_else(|| v0_1_0::Indices::new(pre).map(Self::V0_1))
    }

    pub(crate) fn load(
        &self,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> wasmtime::Result<Exports> {
        Ok(match self {
            Self::V0_1(i) => Exports::V0_1(i.load(store, instance)?),
            Self::V0_2(i) => Exports::V0_2(i.load(store, instance)?),
        })
    }
}

#[allow(clippy::ptr_arg)] // the generated bindings take `&String` (WIT `json`)
impl Exports {
    pub(crate) async fn before_change(
        &self,
        store: &mut Store<HostState>,
        input: &ChangeInput,
    ) -> Result<Verdict<MetadataChange>, CallError> {
        dispatch!(self, x => x.before_change(store, input).await)
    }

    pub(crate) async fn after_change(
        &self,
        store: &mut Store<HostState>,
        session: &Subject,
        recorded: &Recorded,
        info: &Commit,
    ) -> Result<(), CallError> {
        dispatch!(self, x => x.after_change(store, session, recorded, info).await)
    }

    pub(crate) async fn on_get(
        &self,
        store: &mut Store<HostState>,
        session: &Subject,
        metadata: &String,
    ) -> Result<JsonObject, CallError> {
        dispatch!(self, x => x.on_get(store, session, metadata).await)
    }

    pub(crate) async fn before_add(
        &self,
        store: &mut Store<HostState>,
        session: &Subject,
        feedback: &String,
    ) -> Result<Verdict<JsonObject>, CallError> {
        dispatch!(self, x => x.before_add(store, session, feedback).await)
    }

    pub(crate) async fn after_add(
        &self,
        store: &mut Store<HostState>,
        session: &Subject,
        feedback: &String,
        info: &Commit,
    ) -> Result<(), CallError> {
        dispatch!(self, x => x.after_add(store, session, feedback, info).await)
    }

    /// Message hooks exist since 0.2.0.
    pub(crate) async fn before_message(
        &self,
        store: &mut Store<HostState>,
        session: &Subject,
        target: &MessageTarget,
        content: &String,
        max_bytes: usize,
    ) -> Result<Verdict<Box<serde_json::value::RawValue>>, CallError> {
        match self {
            Self::V0_1(_) => Err(CallError::Missing(v0_2_0::MESSAGE_EXPORT)),
            Self::V0_2(x) => {
                x.before_message(store, session, target, content, max_bytes)
                    .await
            }
        }
    }
}

/// A component ready to instantiate, with its export indices.
pub struct Prepared {
    pub(super) pre: InstancePre<HostState>,
    pub(super) indices: Indices,
}

impl Prepared {
    /// Exported hook interfaces, by WIT name (with their version).
    pub fn exports(&self) -> Vec<&'static str> {
        match &self.indices {
            Indices::V0_1(i) => i.exports(),
            Indices::V0_2(i) => i.exports(),
        }
    }

    /// The WIT package the component is served as, e.g. `gateway:hooks@0.1.0`.
    pub fn wit(&self) -> &'static str {
        match &self.indices {
            Indices::V0_1(_) => v0_1_0::WIT,
            Indices::V0_2(_) => v0_2_0::WIT,
        }
    }
}

impl Runtime {
    /// Prepares a component for instantiation: resolves imports and finds
    /// the hook exports of a known WIT version.
    ///
    /// # Errors
    /// When it imports something the host does not provide, or exports no
    /// hook interface of a known version.
    pub fn prepare(&self, component: &Component) -> anyhow::Result<Prepared> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(anyhow::Error::from)
            .context("the component imports something the gateway does not provide")?;
        let indices = Indices::find(&pre).ok_or_else(|| {
            anyhow!(
                "the component exports no hook interface of a supported version ({}, {}; {}, {}, {})",
                v0_1_0::METADATA_EXPORT,
                v0_1_0::FEEDBACK_EXPORT,
                v0_2_0::METADATA_EXPORT,
                v0_2_0::FEEDBACK_EXPORT,
                v0_2_0::MESSAGE_EXPORT,
            )
        })?;
        Ok(Prepared { pre, indices })
    }
}
