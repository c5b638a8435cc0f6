// kvrt-cli: thin main over the engine's command implementations.
#include <cstdio>

int main(int argc, char** argv) {
    std::fprintf(stderr, "kvrt-cli: not built yet\n");
    return 1;
}
