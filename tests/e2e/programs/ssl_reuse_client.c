/*
 * One SSL* for several sequential HTTPS connections:
 *   ssl_reuse_client PORT COUNT MODE PATH_PREFIX
 * Connection i sends "GET PATH_PREFIX-i" and reads the response (its
 * Content-Length) to stdout; the server keeps the connection open, so this
 * client ends it. MODE says how the SSL* is made ready for the next
 * connection: "clear-then-close" calls SSL_clear before close(fd) (the
 * SSL_clear probe ends the connection), "close-then-clear" closes the socket
 * first (the TCP close ends it). The SSL* is the same every time, so only an id the
 * capture allocates can tell the connections apart. stderr: "ssl=0x... fd=N"
 * per connection.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int dial(int port)
{
	struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof(address)) < 0) {
		perror("connect");
		exit(2);
	}
	return fd;
}

/* One HTTP/1.1 response with a Content-Length (as Python's http.server
 * spells it), read whole into buffer. */
static int read_response(SSL *ssl, char *buffer, int size)
{
	int have = 0, got;

	while ((got = SSL_read(ssl, buffer + have, size - 1 - have)) > 0) {
		char *end, *length;

		have += got;
		buffer[have] = 0;
		end = strstr(buffer, "\r\n\r\n");
		length = strstr(buffer, "\r\nContent-Length:");
		if (end && length && end + 4 + atoi(length + 17) <= buffer + have)
			return have;
	}
	return -1;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s PORT COUNT clear-then-close|close-then-clear PREFIX\n",
			argv[0]);
		return 2;
	}
	int port = atoi(argv[1]), count = atoi(argv[2]);
	int clear_first = strcmp(argv[3], "clear-then-close") == 0;
	SSL_CTX *context = SSL_CTX_new(TLS_client_method());
	SSL *ssl = SSL_new(context);
	char request[512], buffer[8192];

	if (!context || !ssl)
		return 3;
	SSL_CTX_set_verify(context, SSL_VERIFY_NONE, NULL);
	for (int i = 0; i < count; i++) {
		int fd = dial(port), got;

		if (!SSL_set_fd(ssl, fd) || SSL_connect(ssl) != 1) {
			ERR_print_errors_fp(stderr);
			return 4;
		}
		snprintf(request, sizeof(request),
			 "GET %s-%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n",
			 argv[4], i, port);
		if (SSL_write(ssl, request, strlen(request)) <= 0) {
			ERR_print_errors_fp(stderr);
			return 5;
		}
		got = read_response(ssl, buffer, sizeof(buffer));
		if (got < 0) {
			ERR_print_errors_fp(stderr);
			return 6;
		}
		fwrite(buffer, 1, got, stdout);
		fprintf(stderr, "ssl=%p fd=%d\n", (void *)ssl, fd);
		if (clear_first) {
			SSL_shutdown(ssl);
			SSL_clear(ssl);
			close(fd);
		} else {
			SSL_shutdown(ssl);
			close(fd);
			SSL_clear(ssl);
		}
	}
	fflush(stdout);
	SSL_free(ssl);
	SSL_CTX_free(context);
	return 0;
}
