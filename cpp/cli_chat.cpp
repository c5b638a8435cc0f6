// kvrt-cli chat: an interactive conversation with a chat model (llama-cli's
// conversation mode). Each turn renders the whole conversation with the
// model's chat template and evaluates only the tokens after the prefix the
// KV cache already holds.
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "chat_template.h"
#include "cli.h"
#include "generate.h"

namespace kvrt {

namespace {

volatile sig_atomic_t g_interrupted = 0;

void chat_on_sigint(int) { g_interrupted = 1; }

// SIGINT sets a flag instead of ending the program, and only the main thread
// takes it: called before the context starts its worker threads, which
// inherit the blocked mask, and the main thread unblocks it afterwards.
void chat_install_sigint(sigset_t& blocked) {
    struct sigaction sa{};
    sa.sa_handler = chat_on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    sigaction(SIGINT, &sa, nullptr);
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGINT);
    pthread_sigmask(SIG_BLOCK, &blocked, nullptr);
}


enum read_result { READ_LINE, READ_EOF, READ_INTERRUPT };

// One line of stdin without its newline. SIGINT stays blocked between the
// check of the flag and the wait, which ppoll unblocks atomically: a Ctrl-C
// arriving in between is not lost.
read_result chat_read_line(std::string& line, const sigset_t& sigint) {
    line.clear();
    sigset_t waiting;
    pthread_sigmask(SIG_BLOCK, &sigint, &waiting);
    sigdelset(&waiting, SIGINT);
    read_result r = READ_EOF;
    for (;;) {
        if (g_interrupted) {
            r = READ_INTERRUPT;
            break;
        }
        struct pollfd pfd = {STDIN_FILENO, POLLIN, 0};
        if (ppoll(&pfd, 1, nullptr, &waiting) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        char c;
        const ssize_t n = read(STDIN_FILENO, &c, 1);
        if (n == 1 && c != '\n') {
            line += c;
            continue;
        }
        if (n == 1 || (n == 0 && !line.empty())) r = READ_LINE;
        if (n < 0 && errno == EINTR) continue;
        break;
    }
    pthread_sigmask(SIG_UNBLOCK, &sigint, nullptr);
    return r;
}

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
    size_t n = 0;
    while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
    return n;
}

std::string token_text_or_empty(const tokenizer& tok, int32_t id) {
    return id >= 0 ? tok.token_text(id) : std::string();
}

}  // namespace

int cli_chat(int argc, char** argv) {
    std::vector<cli_option> opts = cli_model_options();
    opts.push_back({{"--system"}, "TEXT", "system message opening the conversation", ""});
    opts.push_back({{"--chat-template"},
                    "NAME",
                    "template family instead of the model's: " + chat_template_names(),
                    "from the model"});
    opts.push_back(
        {{"-n", "--n-predict"}, "N", "most tokens per reply, -1 = until end of turn", "-1"});
    for (const cli_option& o : cli_sampler_options()) opts.push_back(o);
    cli_args a("chat", opts, argc, argv);
    if (a.help()) {
        std::printf(
            "Chat with a model: type a message after the \"> \" prompt, the reply streams to\n"
            "stdout. Ctrl-C during a reply stops the reply; Ctrl-C or end of input (Ctrl-D)\n"
            "at the prompt ends the chat. The conversation is formatted with the model's\n"
            "chat template (tokenizer.chat_template) and the KV cache is kept across turns.\n\n%s",
            a.usage().c_str());
        return 0;
    }

    generate_params gp;
    gp.max_tokens = (int)a.integer("-n", -1, -1, 1 << 30);
    gp.sampling = cli_sampler_params(a);
    // A bad family name is reported before the model is loaded.
    const std::string template_name = a.str("--chat-template");
    if (!template_name.empty()) chat_template_from_name(template_name);
    context_params cp = cli_context_params(a, 0);
    const std::string model_path = cli_model_path(a);

    auto m = model::load(model_path);
    const tokenizer& tok = m->vocab();
    const chat_template tmpl = chat_template_select(
        m->file().get_str_or("tokenizer.chat_template", ""), template_name,
        token_text_or_empty(tok, tok.bos_id()), token_text_or_empty(tok, tok.eos_id()));
    std::vector<chat_message> messages;
    if (a.has("--system")) messages.push_back({"system", a.str("--system")});
    // Fails here, not at the first reply, for a family without a system role.
    chat_template_apply(tmpl, messages, true);

    sigset_t sigint;
    chat_install_sigint(sigint);
    context ctx(*m, cp);
    pthread_sigmask(SIG_UNBLOCK, &sigint, nullptr);
    std::fprintf(stderr, "model: %s (%s)\n", model_path.c_str(), m->describe().c_str());
    std::fprintf(stderr, "chat: template %s, n_ctx=%d, %d threads\n", chat_template_name(tmpl.kind),
                 ctx.n_ctx(), ctx.n_threads());
    std::fprintf(stderr, "%s\n", ctx.kv().summary_line().c_str());
    if (ctx.device() == DEVICE_CUDA) std::fprintf(stderr, "%s\n", ctx.device_description().c_str());
    std::fprintf(stderr, "chat: Ctrl-C stops a reply; Ctrl-C or Ctrl-D at the prompt quits\n");

    // Tokens whose keys and values the cache holds, position by position.
    std::vector<int32_t> cached;
    std::string line;
    for (;;) {
        g_interrupted = 0;
        std::fputs("> ", stdout);
        std::fflush(stdout);
        const read_result r = chat_read_line(line, sigint);
        if (r != READ_LINE) {
            std::fputs("\n", stdout);
            std::fflush(stdout);
            return r == READ_INTERRUPT ? 130 : 0;
        }
        if (line.empty()) continue;
        messages.push_back({"user", line});

        const std::string prompt = chat_template_apply(tmpl, messages, true);
        // The template writes the BOS text itself where the model wants one.
        const std::vector<int32_t> tokens = tok.encode(prompt, false, true);
        if ((long long)tokens.size() >= ctx.n_ctx()) {
            std::fprintf(stderr,
                         "chat: the conversation is %zu tokens and the context holds %d: "
                         "the context is full; raise -c\n",
                         tokens.size(), ctx.n_ctx());
            return 1;
        }
        // Keep the cached prefix the new prompt shares; at least one token
        // must be evaluated to have logits to sample from.
        const size_t keep = std::min(common_prefix(cached, tokens), tokens.size() - 1);
        ctx.truncate((int)keep);
        cached.resize(keep);
        generator gen(ctx, std::vector<int32_t>(tokens.begin() + keep, tokens.end()), gp);

        std::string reply, piece;
        bool more = true;
        while (more && !g_interrupted) {
            piece.clear();
            more = gen.next(piece);
            reply += piece;
            if (!piece.empty()) {
                std::fwrite(piece.data(), 1, piece.size(), stdout);
                std::fflush(stdout);
            }
        }
        std::fputs("\n", stdout);
        std::fflush(stdout);

        // The cache now holds the prompt and every sampled token but the last.
        cached = tokens;
        cached.insert(cached.end(), gen.tokens().begin(), gen.tokens().end());
        cached.resize((size_t)ctx.n_past());
        // An interrupted reply stays in the conversation as far as it went.
        messages.push_back({"assistant", reply});
        if (g_interrupted) {
            std::fprintf(stderr, "chat: reply interrupted\n");
        } else if (gen.stop_reason() == GENERATE_STOP_CONTEXT) {
            std::fprintf(stderr, "chat: the context is full (%d tokens); raise -c\n", ctx.n_ctx());
            return 1;
        }
        const generate_stats& st = gen.stats();
        std::fprintf(stderr,
                     "chat: %d new prompt tokens (%zu cached), %zu reply tokens, %.1f tokens/s\n",
                     st.n_prompt, keep, gen.tokens().size(), st.decode_tps());
    }
}

}  // namespace kvrt
