//! Streaming uploads: one PUT with `Content-Length`, the body never buffered whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};

use super::DatastoreFile;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::soap;

impl Client {
    /// Uploads a whole file of `length` bytes from a stream, without buffering it: PUT with
    /// `Content-Length`. The stream must yield exactly `length` bytes. Not retried (the stream is
    /// consumed); the caller retries with a fresh stream when [`Error::is_retryable`] says so.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the stream yields more or fewer bytes than `length`;
    /// [`Error::Timeout`] when nothing moves for the idle timeout; [`Error::Http`]; transport
    /// errors.
    pub async fn put<S, E>(&self, file: &DatastoreFile, length: u64, body: S) -> Result<()>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let http = self.http()?.clone();
        // The upload cannot be replayed after a 401, so make sure the session is alive first.
        self.keep_alive().await?;
        let url = file.url(&http.origin);
        let context = format!("PUT {}", file.path);
        let progress = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let tick = progress.clone();
        let started = Instant::now();
        let counted = body.map_err(Into::into).and_then(move |chunk: Bytes| {
            let total =
                counter.fetch_add(chunk.len() as u64, Ordering::AcqRel) + chunk.len() as u64;
            tick.store(started.elapsed().as_millis() as u64, Ordering::Release);
            async move {
                if total > length {
                    Err::<Bytes, Box<dyn std::error::Error + Send + Sync>>(
                        format!("upload stream yielded more than the declared {length} bytes")
                            .into(),
                    )
                } else {
                    Ok(chunk)
                }
            }
        });
        let mut request = http
            .client
            .put(&url)
            .header(reqwest::header::CONTENT_LENGTH, length)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(counted));
        if let Some(cookie) = http.cookie.header() {
            request = request.header(reqwest::header::COOKIE, cookie);
        }
        let idle = self.config().transfer_idle_timeout;
        let send = request.send();
        let watchdog = async {
            loop {
                tokio::time::sleep(idle / 4).await;
                let last = Duration::from_millis(progress.load(Ordering::Acquire));
                if started.elapsed().saturating_sub(last) > idle {
                    return;
                }
            }
        };
        let response = tokio::select! {
            r = send => r,
            () = watchdog => return Err(Error::Timeout { context, after: idle }),
        };
        let uploaded = sent.load(Ordering::Acquire);
        let response = response.map_err(|e| {
            if uploaded != length {
                Error::InvalidInput(format!(
                    "upload of {} stopped after {uploaded} of {length} bytes: {}",
                    file.path,
                    soap::error_chain(&e)
                ))
            } else {
                http.map_error(&e, &context, idle)
            }
        })?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let retry_after = soap::retry_after(response.headers());
            let message = response
                .text()
                .await
                .map(|t| t.chars().take(200).collect())
                .unwrap_or_default();
            return Err(Error::Http {
                context,
                status,
                message,
                retry_after,
            });
        }
        if uploaded != length {
            return Err(Error::InvalidInput(format!(
                "upload stream of {} yielded {uploaded} bytes, declared {length}",
                file.path
            )));
        }
        Ok(())
    }
}
