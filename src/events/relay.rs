//! The outbox relay: publishes unpublished outbox rows to Kafka, in id order, and marks
//! them published. At-least-once: a row is marked only after the broker acknowledged it
//! (`acks=all`, idempotent producer), in the transaction that holds the row's lock; a
//! relay that dies in between leaves the row unpublished and it is sent again, and
//! consumers de-duplicate by `event_id`.
//!
//! Several instances may relay at once: each claims a batch with `FOR UPDATE SKIP LOCKED`.
//! Order per key holds because each key (an order id) has one `order.paid` event, and a
//! batch is sent in id order through a producer that keeps order per partition.
//! While the broker is away the relay retries with a capped backoff; payments never wait
//! for it and nothing is lost, the rows wait in MySQL.

use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    config::ClientConfig,
    error::RDKafkaErrorCode,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use sqlx::{MySqlConnection, MySqlPool, QueryBuilder};

pub use crate::config::KafkaConfig;
use crate::{db, error::AppError};

/// Rows claimed per transaction.
const BATCH: i64 = 200;
/// Pause when the outbox is empty.
const IDLE: Duration = Duration::from_millis(100);
/// Retry backoff while the broker is away: doubles from the first to the last.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long the broker may take to acknowledge one event.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on creating the topic.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Producer settings: every replica acknowledges, and the idempotent producer keeps order
/// and drops its own retried duplicates.
pub fn producer(brokers: &str) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "5000")
        .set("linger.ms", "2")
        .set("topic.metadata.refresh.interval.ms", "5000")
        .create()
}

/// Creates the topic when it does not exist (some brokers do not auto-create).
pub async fn ensure_topic(config: &KafkaConfig) -> Result<(), AppError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .create()
        .map_err(kafka_error)?;
    let topic = NewTopic::new(&config.topic, config.partitions, TopicReplication::Fixed(1));
    // Both bounds: without `request_timeout` a broker that is down holds the call for
    // librdkafka's socket timeout (60 s), and the relay with it.
    let options = AdminOptions::new()
        .operation_timeout(Some(ADMIN_TIMEOUT))
        .request_timeout(Some(ADMIN_TIMEOUT));
    let results = admin
        .create_topics(&[topic], &options)
        .await
        .map_err(kafka_error)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(AppError::Internal(anyhow::anyhow!(
                    "creating topic {name}: {code}"
                )))
            }
        }
    }
    Ok(())
}

/// A Kafka client error: the broker is the unavailable dependency.
pub(crate) fn kafka_error(e: rdkafka::error::KafkaError) -> AppError {
    AppError::DependencyUnavailable(format!("kafka ({e})"))
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    aggregate_id: i64,
    event_type: String,
    payload: String,
}

pub struct Relay {
    db: MySqlPool,
    producer: FutureProducer,
    config: KafkaConfig,
    batch: i64,
}

impl Relay {
    pub fn new(db: MySqlPool, config: KafkaConfig) -> Result<Self, AppError> {
        Ok(Self {
            producer: producer(&config.brokers).map_err(kafka_error)?,
            db,
            config,
            batch: BATCH,
        })
    }

    /// Claims at most `batch` rows per transaction.
    pub fn with_batch(mut self, batch: i64) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Relays until the process ends.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run().await })
    }

    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut topic_ready = false;
        loop {
            if !topic_ready {
                match ensure_topic(&self.config).await {
                    Ok(()) => topic_ready = true,
                    Err(e) => tracing::warn!(error = %e, "kafka topic not ready"),
                }
            }
            metrics::counter!("events_relay_attempts_total").increment(1);
            match self.relay_batch().await {
                Ok(0) => {
                    backoff = BACKOFF_MIN;
                    tokio::time::sleep(IDLE).await;
                }
                Ok(_) => backoff = BACKOFF_MIN,
                Err(e) => {
                    // The broker may have come back without the topic or without this
                    // producer's idempotence state (an in-memory one): start afresh.
                    topic_ready = false;
                    match producer(&self.config.brokers) {
                        Ok(fresh) => self.producer = fresh,
                        Err(e) => {
                            tracing::warn!(error = %e, "recreating the Kafka producer failed")
                        }
                    }
                    metrics::counter!("events_publish_failures_total").increment(1);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "outbox relay failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Publishes one batch and marks it published; returns how many rows it relayed.
    pub async fn relay_batch(&self) -> Result<usize, AppError> {
        let mut tx = self.db.begin().await?;
        let ids = self.publish_claimed(&mut tx).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let mut mark = QueryBuilder::new("UPDATE outbox SET published_at = ");
        mark.push_bind(db::now()).push(" WHERE id IN (");
        let mut list = mark.separated(", ");
        for id in &ids {
            list.push_bind(*id);
        }
        mark.push(")");
        mark.build().execute(&mut *tx).await?;
        tx.commit().await?;
        metrics::counter!("events_published_total").increment(ids.len() as u64);
        Ok(ids.len())
    }

    /// Claims a batch (skipping rows another relay holds) and publishes it, in id order,
    /// waiting for every acknowledgement; returns the ids. The caller marks them published
    /// in the same transaction. Public so a test can play a relay that dies right here.
    pub async fn publish_claimed(&self, tx: &mut MySqlConnection) -> Result<Vec<i64>, AppError> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, aggregate_id, event_type, CAST(payload AS CHAR) AS payload FROM outbox \
             WHERE published_at IS NULL ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
        )
        .bind(self.batch)
        .fetch_all(&mut *tx)
        .await?;
        let keys: Vec<String> = rows.iter().map(|r| r.aggregate_id.to_string()).collect();
        let sends = rows.iter().zip(&keys).map(|(row, key)| {
            let headers = OwnedHeaders::new().insert(Header {
                key: "event_type",
                value: Some(row.event_type.as_str()),
            });
            let record = FutureRecord::to(&self.config.topic)
                .key(key.as_str())
                .payload(row.payload.as_str())
                .headers(headers);
            self.producer.send(record, SEND_TIMEOUT)
        });
        // Enqueued in id order; the idempotent producer keeps that order per partition.
        for delivery in futures_util::future::join_all(sends).await {
            delivery.map_err(|(e, _)| kafka_error(e))?;
        }
        Ok(rows.into_iter().map(|r| r.id).collect())
    }
}

/// Deletes every published row older than `retention` (in chunks); returns how many.
/// Unpublished rows are never deleted: they are the events still to send.
pub async fn prune(pool: &MySqlPool, retention: Duration) -> Result<u64, AppError> {
    let cutoff = db::now() - chrono::Duration::from_std(retention).map_err(anyhow::Error::from)?;
    Ok(db::delete_all_before(
        pool,
        "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < ? LIMIT ?",
        cutoff,
    )
    .await?)
}
