//! `brokerctl`: the broker side of Keel's broker benchmark (`scripts/bench.sh`,
//! `BENCH_ONLY=redis|rabbitmq|nats`). It never delivers anything itself.
//!
//! ```text
//! brokerctl prepare redis|rabbitmq|nats NAME   # RabbitMQ: declare queue NAME; NATS: create
//!                                              # stream NAME on subjects NAME.>; Redis: none
//! brokerctl count   redis|rabbitmq|nats NAME   # prints how many messages arrived:
//!                                              # XLEN NAME / the queue's ready messages /
//!                                              # the stream's message count
//! brokerctl cleanup redis|rabbitmq|nats NAME   # DEL NAME / delete the queue / the stream
//! ```
//!
//! Brokers at their default local addresses: Redis 127.0.0.1:6379, RabbitMQ
//! 127.0.0.1:5672 (guest/guest), NATS 127.0.0.1:4222. Exits 1 with a message on any error.

use std::process::ExitCode;

type Error = Box<dyn std::error::Error + Send + Sync>;

const REDIS_URL: &str = "redis://127.0.0.1:6379/";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const NATS_ADDR: &str = "127.0.0.1:4222";

async fn run(action: &str, kind: &str, name: &str) -> Result<(), Error> {
    match kind {
        "redis" => {
            let mut conn = redis::Client::open(REDIS_URL)?
                .get_multiplexed_async_connection()
                .await?;
            match action {
                "prepare" => {}
                "count" => {
                    let n: u64 = redis::cmd("XLEN").arg(name).query_async(&mut conn).await?;
                    println!("{n}");
                }
                _ => {
                    let _: i64 = redis::cmd("DEL").arg(name).query_async(&mut conn).await?;
                }
            }
        }
        "rabbitmq" => {
            use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
            let conn = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
                .await?;
            let ch = conn.create_channel().await?;
            match action {
                "prepare" => {
                    ch.queue_declare(
                        name.into(),
                        QueueDeclareOptions::default(),
                        Default::default(),
                    )
                    .await?;
                }
                "count" => {
                    let q = ch
                        .queue_declare(
                            name.into(),
                            QueueDeclareOptions {
                                passive: true,
                                ..QueueDeclareOptions::default()
                            },
                            Default::default(),
                        )
                        .await?;
                    println!("{}", q.message_count());
                }
                _ => {
                    ch.queue_delete(name.into(), QueueDeleteOptions::default())
                        .await?;
                }
            }
        }
        "nats" => {
            let js = async_nats::jetstream::new(async_nats::connect(NATS_ADDR).await?);
            match action {
                "prepare" => {
                    js.create_stream(async_nats::jetstream::stream::Config {
                        name: name.to_owned(),
                        subjects: vec![format!("{name}.>")],
                        ..Default::default()
                    })
                    .await?;
                }
                "count" => {
                    let mut stream = js.get_stream(name).await?;
                    println!("{}", stream.info().await?.state.messages);
                }
                _ => {
                    js.delete_stream(name).await?;
                }
            }
        }
        other => return Err(format!("unknown broker {other:?} (redis, rabbitmq, nats)").into()),
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [action, kind, name] = args.as_slice() else {
        eprintln!("usage: brokerctl prepare|count|cleanup redis|rabbitmq|nats NAME");
        return ExitCode::from(2);
    };
    if !matches!(action.as_str(), "prepare" | "count" | "cleanup") {
        eprintln!("brokerctl: unknown action {action:?} (prepare, count, cleanup)");
        return ExitCode::from(2);
    }
    match run(action, kind, name).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("brokerctl {action} {kind} {name}: {e}");
            ExitCode::from(1)
        }
    }
}
