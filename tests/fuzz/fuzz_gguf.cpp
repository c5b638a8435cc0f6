// libFuzzer target for the GGUF reader. Not part of the CMake build (the
// tests/cpp glob would make it a plain executable); build it by hand:
//
//   clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -Icpp \
//       tests/fuzz/fuzz_gguf.cpp cpp/gguf.cpp -o fuzz_gguf
//   ./fuzz_gguf -max_len=4096 corpus/        # seed corpus: any small .gguf files
//
// Without clang, -DKVRT_FUZZ_REPLAY builds a main() that runs each file named
// on the command line through the same entry point (g++ with -fsanitize=address).
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        auto f = kvrt::gguf_file::open_memory(data, size, "fuzz.gguf");
        // Touch everything a caller would: values, getters, tensor bytes.
        size_t sum = 0;
        for (const auto& [key, v] : f->kv()) sum += kvrt::gguf_value_to_string(v, 4).size();
        for (const auto& t : f->tensors()) {
            if (t.nbytes) sum += t.data[0] + t.data[t.nbytes - 1];
        }
        (void)f->get_uint_or("general.alignment", 0);
        (void)f->get_str_or("general.architecture", "");
        volatile size_t sink = sum;
        (void)sink;
    } catch (const kvrt::error&) {
    }
    return 0;
}

#ifdef KVRT_FUZZ_REPLAY
int main(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        std::ifstream in(argv[i], std::ios::binary);
        std::vector<uint8_t> buf((std::istreambuf_iterator<char>(in)), {});
        LLVMFuzzerTestOneInput(buf.data(), buf.size());
    }
    std::printf("replayed %d inputs\n", argc - 1);
    return 0;
}
#endif
