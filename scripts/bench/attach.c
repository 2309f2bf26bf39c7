/*
 * Loads an eBPF object and attaches every program in it by its section name
 * (libbpf), for the empty-program floor of scripts/bench.sh (part 4).
 *
 *   attach OBJECT
 *
 * Prints "attached N" once all are attached, then holds them until SIGTERM or
 * SIGINT (or stdin closing is not watched: kill it by pid).
 */
#include <bpf/libbpf.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

int main(int argc, char **argv)
{
	struct bpf_object *obj;
	struct bpf_program *prog;
	int n = 0;

	if (argc != 2) {
		fprintf(stderr, "usage: %s OBJECT\n", argv[0]);
		return 2;
	}
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	obj = bpf_object__open_file(argv[1], NULL);
	if (!obj || libbpf_get_error(obj)) {
		fprintf(stderr, "attach: cannot open %s\n", argv[1]);
		return 1;
	}
	if (bpf_object__load(obj)) {
		fprintf(stderr, "attach: cannot load %s\n", argv[1]);
		return 1;
	}
	bpf_object__for_each_program(prog, obj)
	{
		struct bpf_link *link = bpf_program__attach(prog);

		if (!link || libbpf_get_error(link)) {
			fprintf(stderr, "attach: cannot attach %s\n", bpf_program__name(prog));
			return 1;
		}
		n++;
	}
	printf("attached %d\n", n);
	fflush(stdout);
	while (!stop)
		pause();
	bpf_object__close(obj);
	return 0;
}
