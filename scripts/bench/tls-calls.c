// Per-call cost of OpenSSL's SSL_read/SSL_write, for scripts/bench-tls.sh:
// a client and a server SSL in one process, joined by a BIO pair (no
// sockets, no syscalls), exchange a small HTTP request and response N times:
// 4 calls (client write, server read, server write, client read) per
// exchange. Prints "<ns per call>" of the best of B batches.
//
//   tls-calls CERT KEY [ITERATIONS] [BATCHES]
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char REQUEST[] = "GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
static const char RESPONSE[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

static void die(const char *what)
{
	fprintf(stderr, "tls-calls: %s\n", what);
	ERR_print_errors_fp(stderr);
	exit(1);
}

static double now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

/* Drives both handshakes until done (the BIO pair carries the records). */
static void handshake(SSL *client, SSL *server)
{
	for (int i = 0; i < 100; i++) {
		int c = SSL_do_handshake(client), s = SSL_do_handshake(server);

		if (c == 1 && s == 1)
			return;
	}
	die("handshake did not finish");
}

int main(int argc, char **argv)
{
	if (argc < 3)
		die("usage: tls-calls CERT KEY [ITERATIONS] [BATCHES]");
	long iterations = argc > 3 ? atol(argv[3]) : 100000;
	int batches = argc > 4 ? atoi(argv[4]) : 5;
	SSL_CTX *sctx = SSL_CTX_new(TLS_server_method());
	SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());

	if (!sctx || !cctx)
		die("SSL_CTX_new");
	if (SSL_CTX_use_certificate_file(sctx, argv[1], SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_use_PrivateKey_file(sctx, argv[2], SSL_FILETYPE_PEM) != 1)
		die("cannot load the certificate or key");
	SSL *server = SSL_new(sctx), *client = SSL_new(cctx);
	BIO *sbio, *cbio;

	if (!BIO_new_bio_pair(&sbio, 1 << 16, &cbio, 1 << 16))
		die("BIO_new_bio_pair");
	SSL_set_bio(server, sbio, sbio);
	SSL_set_bio(client, cbio, cbio);
	SSL_set_accept_state(server);
	SSL_set_connect_state(client);
	handshake(client, server);

	char buf[256];
	double best = 0;

	for (int b = 0; b < batches; b++) {
		double start = now_ns();

		for (long i = 0; i < iterations; i++) {
			if (SSL_write(client, REQUEST, sizeof(REQUEST) - 1) <= 0 ||
			    SSL_read(server, buf, sizeof(buf)) <= 0 ||
			    SSL_write(server, RESPONSE, sizeof(RESPONSE) - 1) <= 0 ||
			    SSL_read(client, buf, sizeof(buf)) <= 0)
				die("exchange failed");
		}
		double per_call = (now_ns() - start) / (iterations * 4.0);

		if (b == 0 || per_call < best)
			best = per_call;
	}
	printf("%.1f\n", best);
	return 0;
}
