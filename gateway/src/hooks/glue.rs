//! [`shared_host_glue!`]: the host glue the WIT versions share, expanded in
//! each version module.

/// The host glue every WIT version shares as long as its `host` interface and
/// its metadata and feedback hooks are 0.1.0's: the `host` import
/// implementation, the calls into the metadata and feedback exports (an
/// `impl Exports` block), and the conversions between WIT values and the
/// gateway's types. Expanded inside each version module (`v0_1_0`,
/// `v0_2_0`), where the names it uses (`gateway`, `Exports`, `SessionRef`,
/// `WitChange`, …) are that version's generated types; a version that changes
/// one of them gets its own code instead.
macro_rules! shared_host_glue {
    () => {
        /// Adds this version's `host` imports to the linker.
        ///
        /// # Errors
        /// When the linker already defines them.
        pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
            gateway::hooks::host::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
        }

        impl gateway::hooks::types::Host for HostState {}

        impl gateway::hooks::host::Host for HostState {
            fn log(
                &mut self,
                level: Level,
                message: String,
                fields: Vec<gateway::hooks::types::Field>,
            ) {
                let level = match level {
                    Level::Trace => LogLevel::Trace,
                    Level::Debug => LogLevel::Debug,
                    Level::Info => LogLevel::Info,
                    Level::Warn => LogLevel::Warn,
                    Level::Error => LogLevel::Error,
                };
                self.log_line(
                    level,
                    message,
                    fields.iter().map(|f| (f.key.as_str(), f.value.as_str())),
                );
            }

            fn config(&mut self) -> String {
                self.config_json().to_owned()
            }

            fn publish(&mut self, target: String, payload: String) -> Result<String, PublishError> {
                self.publish_checked(target, payload).map_err(|e| match e {
                    PublishRefusal::NotGranted => PublishError::NotGranted,
                    PublishRefusal::InvalidPayload => PublishError::InvalidPayload,
                    PublishRefusal::Unavailable => PublishError::Unavailable,
                })
            }
        }

        #[allow(clippy::ptr_arg)]
        impl Exports {
            fn metadata(&self) -> Result<&metadata_hook::Guest, CallError> {
                self.metadata
                    .as_ref()
                    .ok_or(CallError::Missing(METADATA_EXPORT))
            }

            fn feedback(&self) -> Result<&feedback_hook::Guest, CallError> {
                self.feedback
                    .as_ref()
                    .ok_or(CallError::Missing(FEEDBACK_EXPORT))
            }

            /// `metadata-hook.before-change`, its rewrite checked like a client's change.
            pub async fn before_change(
                &self,
                store: &mut Store<HostState>,
                input: &ChangeInput,
            ) -> Result<Verdict<MetadataChange>, CallError> {
                let (session, change) = change_input_wit(input);
                let verdict = self
                    .metadata()?
                    .call_before_change(store, session, change)
                    .await
                    .map_err(trap)?;
                check_len("verdict", verdict_len(&verdict))?;
                Ok(match verdict {
                    MetadataVerdict::Allow => Verdict::Allow,
                    MetadataVerdict::Deny(reason) => Verdict::Deny(reason),
                    MetadataVerdict::Rewrite(c) => {
                        Verdict::Rewrite(change_from_wit(c).map_err(CallError::BadOutput)?)
                    }
                })
            }

            /// `metadata-hook.after-change`.
            pub async fn after_change(
                &self,
                store: &mut Store<HostState>,
                session: &Subject,
                recorded: &Recorded,
                info: &Commit,
            ) -> Result<(), CallError> {
                let values = Value::Object(recorded.values.clone()).to_string();
                self.metadata()?
                    .call_after_change(
                        store,
                        &session_to_wit(session),
                        &change_to_wit(&recorded.change),
                        &recorded.changed,
                        &values,
                        &commit_to_wit(info),
                    )
                    .await
                    .map_err(trap)
            }

            /// `metadata-hook.on-get`: the result must be a JSON object.
            pub async fn on_get(
                &self,
                store: &mut Store<HostState>,
                session: &Subject,
                metadata: &String,
            ) -> Result<JsonObject, CallError> {
                let out = self
                    .metadata()?
                    .call_on_get(store, &session_to_wit(session), metadata)
                    .await
                    .map_err(trap)?;
                check_len("on-get result", out.len())?;
                object_from_wit("on-get result", &out).map_err(CallError::BadOutput)
            }

            /// `feedback-hook.before-add`, its rewrite checked like a client's feedback.
            pub async fn before_add(
                &self,
                store: &mut Store<HostState>,
                session: &Subject,
                feedback: &String,
            ) -> Result<Verdict<JsonObject>, CallError> {
                let v = self
                    .feedback()?
                    .call_before_add(store, &session_to_wit(session), feedback)
                    .await
                    .map_err(trap)?;
                Ok(match v {
                    FeedbackVerdict::Allow => Verdict::Allow,
                    FeedbackVerdict::Deny(reason) => {
                        check_len("verdict", reason.len())?;
                        Verdict::Deny(reason)
                    }
                    FeedbackVerdict::Rewrite(text) => {
                        check_len("verdict", text.len())?;
                        Verdict::Rewrite(feedback_from_wit(&text)?)
                    }
                })
            }

            /// `feedback-hook.after-add`.
            pub async fn after_add(
                &self,
                store: &mut Store<HostState>,
                session: &Subject,
                feedback: &String,
                info: &Commit,
            ) -> Result<(), CallError> {
                self.feedback()?
                    .call_after_add(
                        store,
                        &session_to_wit(session),
                        feedback,
                        &commit_to_wit(info),
                    )
                    .await
                    .map_err(trap)
            }
        }

        /// A feedback rewrite, checked like a client's feedback.
        pub(super) fn feedback_from_wit(text: &str) -> Result<JsonObject, CallError> {
            let fb = object_from_wit("feedback rewrite", text).map_err(CallError::BadOutput)?;
            crate::model::validate_feedback(&fb)
                .map_err(|e| CallError::BadOutput(format!("feedback rewrite: {e}")))?;
            Ok(fb)
        }

        fn verdict_len(v: &MetadataVerdict) -> usize {
            match v {
                MetadataVerdict::Allow => 0,
                MetadataVerdict::Deny(r) => r.len(),
                MetadataVerdict::Rewrite(WitChange::Update(a)) => {
                    a.iter().map(|x| x.path.len() + x.value.len()).sum()
                }
                MetadataVerdict::Rewrite(WitChange::Delete(k)) => k.iter().map(String::len).sum(),
            }
        }

        /// Converts who a call is about into its WIT form.
        pub fn session_to_wit(s: &super::outcome::Subject) -> SessionRef {
            SessionRef {
                tenant: s.tenant.clone(),
                session_id: s.session_id.clone(),
                session_type: s.session_type.clone(),
            }
        }

        /// Converts commit details into their WIT form.
        pub fn commit_to_wit(c: &Commit) -> CommitInfo {
            CommitInfo {
                event_id: c.event_id,
                timestamp: c.timestamp.clone(),
            }
        }

        /// Converts a gateway change into its WIT form.
        pub fn change_to_wit(change: &MetadataChange) -> WitChange {
            match change {
                MetadataChange::Update(a) => WitChange::Update(
                    a.iter()
                        .map(|(path, v)| Assignment {
                            path: path.clone(),
                            value: v.to_string(),
                        })
                        .collect(),
                ),
                MetadataChange::Delete(keys) => WitChange::Delete(keys.clone()),
            }
        }

        /// Converts a change a plugin returned, checking it like a client's.
        ///
        /// # Errors
        /// A message saying what the plugin got wrong.
        pub fn change_from_wit(change: WitChange) -> Result<MetadataChange, String> {
            let change = match change {
                WitChange::Update(a) => MetadataChange::Update(
                    a.into_iter()
                        .map(|x| {
                            serde_json::from_str::<Value>(&x.value)
                                .map(|v| (x.path.clone(), v))
                                .map_err(|e| {
                                    format!("rewrite value for {:?} is not JSON: {e}", x.path)
                                })
                        })
                        .collect::<Result<_, _>>()?,
                ),
                WitChange::Delete(keys) => MetadataChange::Delete(keys),
            };
            change
                .validate()
                .map_err(|e| format!("rewrite is invalid: {e}"))?;
            Ok(change)
        }

        /// Parses a JSON object a plugin returned.
        ///
        /// # Errors
        /// When it is not JSON or not an object.
        pub fn object_from_wit(what: &str, text: &str) -> Result<JsonObject, String> {
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(m)) => Ok(m),
                Ok(_) => Err(format!("{what} must be a JSON object")),
                Err(e) => Err(format!("{what} is not JSON: {e}")),
            }
        }
    };
}
