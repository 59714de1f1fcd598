/* Synthetic TLS producer for the zero-loss throughput bench (docs/performance.md#zero-loss-throughput).
 *
 * One process, two threads, one TLS connection over a socketpair: the main thread SSL_writes
 * records of SIZE bytes at RATE records/s (paced every ~100 us), the other thread SSL_reads them.
 * Each record is therefore one SSL_write and one SSL_read: two capture events.
 * Usage: producer CERT KEY SIZE RATE SECONDS
 * Prints one JSON object: {"records_written","records_read","bytes_read","seconds","behind_ms"}.
 * "behind_ms" is the writer's largest lag behind its schedule.
 */
#define _GNU_SOURCE
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "producer: %s\n", what);
	ERR_print_errors_fp(stderr);
	exit(2);
}

struct reader_state {
	SSL *ssl;
	size_t size;
	uint64_t records;
	uint64_t bytes;
};

static void *reader(void *arg)
{
	struct reader_state *state = arg;
	char *buffer = malloc(state->size < 16384 ? 16384 : state->size);
	if (SSL_accept(state->ssl) != 1)
		die("SSL_accept failed");
	for (;;) {
		int got = SSL_read(state->ssl, buffer, (int)state->size);
		if (got <= 0)
			break;
		state->records++;
		state->bytes += (uint64_t)got;
	}
	free(buffer);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: producer CERT KEY SIZE RATE SECONDS\n");
		return 2;
	}
	size_t size = strtoul(argv[3], NULL, 10);
	double rate = strtod(argv[4], NULL);
	double seconds = strtod(argv[5], NULL);
	if (size == 0 || size > 16384 || rate <= 0 || seconds <= 0)
		die("SIZE must be 1..16384 (one TLS record), RATE and SECONDS > 0");

	SSL_CTX *server_ctx = SSL_CTX_new(TLS_server_method());
	SSL_CTX *client_ctx = SSL_CTX_new(TLS_client_method());
	if (!server_ctx || !client_ctx)
		die("SSL_CTX_new failed");
	if (SSL_CTX_use_certificate_file(server_ctx, argv[1], SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_use_PrivateKey_file(server_ctx, argv[2], SSL_FILETYPE_PEM) != 1)
		die("cannot load certificate or key");

	int pair[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0)
		die("socketpair failed");
	SSL *server = SSL_new(server_ctx), *client = SSL_new(client_ctx);
	SSL_set_fd(server, pair[0]);
	SSL_set_fd(client, pair[1]);

	struct reader_state state = { .ssl = server, .size = size };
	pthread_t thread;
	if (pthread_create(&thread, NULL, reader, &state) != 0)
		die("pthread_create failed");
	if (SSL_connect(client) != 1)
		die("SSL_connect failed");

	char *record = malloc(size);
	memset(record, 'x', size);
	uint64_t written = 0;
	double behind = 0;
	const double start = now_s();
	for (;;) {
		double elapsed = now_s() - start;
		if (elapsed >= seconds)
			break;
		uint64_t due = (uint64_t)(elapsed * rate);
		if (due > written && (double)(due - written) / rate > behind)
			behind = (double)(due - written) / rate;
		while (written < due) {
			if (SSL_write(client, record, (int)size) <= 0)
				die("SSL_write failed");
			written++;
			if ((written & 255) == 0 && now_s() - start >= seconds)
				break; /* far behind: the step's time is up all the same */
		}
		struct timespec pause = { 0, 100000 };
		nanosleep(&pause, NULL);
	}
	const double spent = now_s() - start;
	SSL_shutdown(client);
	shutdown(pair[1], SHUT_WR);
	pthread_join(thread, NULL);
	printf("{\"records_written\": %llu, \"records_read\": %llu, \"bytes_read\": %llu, "
	       "\"seconds\": %.6f, \"behind_ms\": %.3f}\n",
	       (unsigned long long)written, (unsigned long long)state.records,
	       (unsigned long long)state.bytes, spent, behind * 1e3);
	free(record);
	SSL_free(client);
	SSL_free(server);
	SSL_CTX_free(client_ctx);
	SSL_CTX_free(server_ctx);
	return 0;
}
