//! Waiting for vSphere tasks.
//!
//! `*_Task` methods return a Task moref at once; [`Client::wait_for_task`] polls `info` with
//! backoff, reports progress, and maps `info.error` to the same typed [`Fault`]s as SOAP faults,
//! with the server's `localizedMessage`. A deadline that passes is **not** a failure: the task
//! keeps running in vCenter, so it surfaces as [`Error::TaskOutcomeUnknown`] and the caller must
//! re-check the entity before acting again.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{CallKind, Client};
use crate::error::{Error, Result};
use crate::fault::Fault;
use crate::property_collector::PropertySpec;
use crate::types::MoRef;
use crate::xml::{Node, Writer};

/// `TaskInfo.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting to run.
    Queued,
    /// Running.
    Running,
    /// Finished successfully.
    Success,
    /// Finished with an error.
    Error,
}

impl TaskState {
    fn parse(text: &str) -> Result<Self> {
        match text.trim() {
            "queued" => Ok(Self::Queued),
            "running" => Ok(Self::Running),
            "success" => Ok(Self::Success),
            "error" => Ok(Self::Error),
            other => Err(Error::Xml(format!("unknown task state {other:?}"))),
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Success => "success",
            Self::Error => "error",
        })
    }
}

/// A snapshot of `TaskInfo`.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    /// The task.
    pub task: MoRef,
    /// Its state.
    pub state: TaskState,
    /// Percent done, while running.
    pub progress: Option<u8>,
    /// The error of a failed task, with the server's localized message.
    pub error: Option<Fault>,
    /// The result as a moref (new snapshot, registered VM), when it is one.
    pub result_moref: Option<MoRef>,
    /// The raw result element, for the callers that decode other result types.
    pub(crate) result: Option<Node>,
    /// E.g. `VirtualMachine.createSnapshot`.
    pub description_id: String,
    /// The entity's name.
    pub entity_name: String,
}

impl TaskInfo {
    fn from_node(task: &MoRef, info: &Node) -> Result<Self> {
        let state = TaskState::parse(info.required_text("state")?)?;
        let progress = info
            .child_num::<i64>("progress")?
            .map(|p| p.clamp(0, 100) as u8);
        let error = info.child("error").map(|e| {
            let message = e.child_text("localizedMessage").unwrap_or_default();
            e.child("fault").map_or_else(
                || Fault::new("Unknown", message),
                |f| Fault::from_node(f, message),
            )
        });
        let result = info.child("result").cloned();
        let result_moref = result.as_ref().and_then(|r| MoRef::from_node(r).ok());
        Ok(Self {
            task: task.clone(),
            state,
            progress,
            error,
            result_moref,
            result,
            description_id: info
                .child_text("descriptionId")
                .unwrap_or_default()
                .to_owned(),
            entity_name: info.child_text("entityName").unwrap_or_default().to_owned(),
        })
    }
}

/// Called with the task's progress (0–100) whenever it changes.
pub type ProgressFn = Arc<dyn Fn(u8) + Send + Sync>;

/// How to wait.
#[derive(Clone, Default)]
pub struct WaitOptions {
    /// Give up waiting after this long ([`Error::TaskOutcomeUnknown`]); `None` waits forever.
    pub timeout: Option<Duration>,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
}

impl fmt::Debug for WaitOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitOptions")
            .field("timeout", &self.timeout)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl WaitOptions {
    /// Waits at most `timeout`.
    pub fn timeout(timeout: Duration) -> Self {
        Self {
            timeout: Some(timeout),
            progress: None,
        }
    }
}

const TASK_INFO: &[PropertySpec] = &[PropertySpec {
    kind: "Task",
    paths: &["info"],
}];

impl Client {
    /// Reads a task's info once.
    ///
    /// # Errors
    /// Faults (ManagedObjectNotFound once the server purged the task) and transport errors.
    pub async fn task_info(&self, task: &MoRef) -> Result<TaskInfo> {
        let objects = self
            .retrieve_objects(TASK_INFO, std::slice::from_ref(task))
            .await?;
        let info = objects
            .iter()
            .find(|o| &o.obj == task)
            .and_then(|o| o.get("info"))
            .ok_or_else(|| Error::Xml(format!("no info for task {task}")))?;
        TaskInfo::from_node(task, info)
    }

    /// Waits until the task succeeds or fails.
    ///
    /// `what` names the operation in errors (e.g. `CreateSnapshot_Task`).
    ///
    /// # Errors
    /// [`Error::Fault`] with the task's fault and localized message when it fails;
    /// [`Error::TaskOutcomeUnknown`] when the timeout passes or the task vanished; transport
    /// errors while polling.
    pub async fn wait_for_task(
        &self,
        task: &MoRef,
        what: &str,
        options: &WaitOptions,
    ) -> Result<TaskInfo> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        let mut last_progress = None;
        loop {
            let info = match self.task_info(task).await {
                Ok(info) => info,
                Err(err) if err.is_managed_object_not_found() => {
                    return Err(Error::TaskOutcomeUnknown {
                        task: task.clone(),
                        reason: format!(
                            "the task disappeared from vCenter while waiting for {what}"
                        ),
                    });
                }
                Err(err) => return Err(err),
            };
            match info.state {
                TaskState::Success => {
                    if let Some(progress) = &options.progress
                        && last_progress != Some(100)
                    {
                        progress(100);
                    }
                    return Ok(info);
                }
                TaskState::Error => {
                    let fault = info
                        .error
                        .clone()
                        .unwrap_or_else(|| Fault::new("Unknown", "task failed without an error"));
                    return Err(Error::Fault {
                        method: what.to_owned(),
                        fault: Box::new(fault),
                    });
                }
                TaskState::Queued | TaskState::Running => {}
            }
            if let (Some(progress), Some(p)) = (&options.progress, info.progress)
                && last_progress != Some(p)
            {
                progress(p);
                last_progress = Some(p);
            }
            if let Some(timeout) = options.timeout {
                let elapsed = started.elapsed();
                if elapsed >= timeout {
                    return Err(Error::TaskOutcomeUnknown {
                        task: task.clone(),
                        reason: format!(
                            "{what} still {} after {timeout:?}; it may still complete in vCenter",
                            info.state
                        ),
                    });
                }
                pause = pause.min(timeout - elapsed);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 3 / 2).min(self.config().task_poll_max);
        }
    }

    /// Asks vCenter to cancel a running task (not every task is cancelable).
    ///
    /// # Errors
    /// Faults (e.g. NotSupported for non-cancelable tasks, InvalidState when already done).
    pub async fn cancel_task(&self, task: &MoRef) -> Result<()> {
        let mut w = Writer::new();
        w.moref("_this", task);
        self.invoke("CancelTask", &w.finish(), CallKind::Idempotent)
            .await
            .map(|_| ())
    }

    /// Calls a `*_Task` method and returns the task moref.
    pub(crate) fn task_moref(method: &str, response: &Node) -> Result<MoRef> {
        response
            .child("returnval")
            .ok_or_else(|| Error::Xml(format!("{method} returned no task")))
            .and_then(MoRef::from_node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_info_decodes_error_with_localized_message() {
        let xml = r#"<val xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="TaskInfo">
            <key>task-1</key><task type="Task">task-1</task><descriptionId>VirtualMachine.createSnapshot</descriptionId>
            <entityName>vm 1</entityName><state>error</state>
            <error><fault XMLSchema-instance:type="ApplicationQuiesceFault"></fault><localizedMessage>quiesce failed: tools not running</localizedMessage></error>
          </val>"#;
        let info =
            TaskInfo::from_node(&MoRef::new("Task", "task-1"), &Node::parse(xml).unwrap()).unwrap();
        assert_eq!(info.state, TaskState::Error);
        let fault = info.error.unwrap();
        assert_eq!(fault.kind, crate::fault::FaultKind::SnapshotFault);
        assert_eq!(fault.message, "quiesce failed: tools not running");
        assert_eq!(info.description_id, "VirtualMachine.createSnapshot");
    }

    #[test]
    fn task_info_decodes_moref_result_and_progress() {
        let xml = r#"<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><state>success</state><progress>250</progress>
            <result xsi:type="ManagedObjectReference" type="VirtualMachineSnapshot">snapshot-69</result></val>"#;
        let info =
            TaskInfo::from_node(&MoRef::new("Task", "t"), &Node::parse(xml).unwrap()).unwrap();
        assert_eq!(
            info.result_moref,
            Some(MoRef::new("VirtualMachineSnapshot", "snapshot-69"))
        );
        assert_eq!(info.progress, Some(100));
        assert!(
            TaskInfo::from_node(
                &MoRef::new("Task", "t"),
                &Node::parse("<val><state>odd</state></val>").unwrap()
            )
            .is_err()
        );
    }
}

#[cfg(test)]
mod wait_tests {
    use std::sync::Mutex;

    use super::*;
    use crate::fake::{self, Fake, ok};

    fn info(state: &str, extra: &str) -> String {
        format!(
            "<returnval><objects><obj type=\"Task\">task-7</obj><propSet><name>info</name><val xsi:type=\"TaskInfo\">\
<key>task-7</key><task type=\"Task\">task-7</task><state>{state}</state>{extra}</val></propSet></objects></returnval>"
        )
    }

    #[tokio::test]
    async fn waits_through_queued_and_running_reporting_progress() {
        let f = Fake::new(|m, _, n| {
            (m == "RetrievePropertiesEx").then(|| match n {
                1 => ok(m, &info("queued", "")),
                2 => ok(m, &info("running", "<progress>40</progress>")),
                3 => ok(m, &info("running", "<progress>40</progress>")),
                _ => ok(m, &info("success", "")),
            })
        });
        let c = fake::client(&f).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let options = WaitOptions {
            timeout: Some(Duration::from_secs(10)),
            progress: Some(Arc::new(move |p| s.lock().unwrap().push(p))),
        };
        let done = c
            .wait_for_task(&MoRef::new("Task", "task-7"), "X_Task", &options)
            .await
            .unwrap();
        assert_eq!(done.state, TaskState::Success);
        assert_eq!(*seen.lock().unwrap(), vec![40, 100]);
    }

    // covers N7: a failed task surfaces the server's message as a typed fault.
    #[tokio::test]
    async fn a_failed_task_is_a_typed_fault_with_the_server_message() {
        let f = Fake::new(|m, _, _| {
            (m == "RetrievePropertiesEx").then(|| {
                ok(m, &info("error", "<error><fault xsi:type=\"SnapshotFault\"/><localizedMessage>Injected: quiesce failed</localizedMessage></error>"))
            })
        });
        let c = fake::client(&f).await.unwrap();
        let err = c
            .wait_for_task(
                &MoRef::new("Task", "task-7"),
                "CreateSnapshot_Task",
                &WaitOptions::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "CreateSnapshot_Task failed: SnapshotFault: Injected: quiesce failed"
        );
        assert_eq!(
            err.fault().unwrap().kind,
            crate::fault::FaultKind::SnapshotFault
        );
    }

    #[tokio::test]
    async fn a_deadline_is_an_unknown_outcome_and_a_vanished_task_too() {
        let f =
            Fake::new(|m, _, _| (m == "RetrievePropertiesEx").then(|| ok(m, &info("running", ""))));
        let c = fake::client(&f).await.unwrap();
        let task = MoRef::new("Task", "task-7");
        let err = c
            .wait_for_task(
                &task,
                "RemoveSnapshot_Task",
                &WaitOptions::timeout(Duration::from_millis(30)),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::TaskOutcomeUnknown { .. }), "{err:?}");
        assert!(err.to_string().contains("may still complete"), "{err}");

        let f = Fake::new(|m, _, _| {
            (m == "RetrievePropertiesEx")
                .then(|| crate::fake::fault(500, "ManagedObjectNotFound", "gone"))
        });
        let c = fake::client(&f).await.unwrap();
        let err = c
            .wait_for_task(&task, "X", &WaitOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::TaskOutcomeUnknown { .. }), "{err:?}");
    }
}
