#include "chat_template.h"

#include <ctime>

#include "common.h"

namespace kvrt {

namespace {

struct family_name {
    chat_template_kind kind;
    const char* name;
};

const family_name k_families[] = {
    {CHAT_TEMPLATE_CHATML, "chatml"},
    {CHAT_TEMPLATE_LLAMA3, "llama3"},
    {CHAT_TEMPLATE_LLAMA31, "llama3.1"},
    {CHAT_TEMPLATE_LLAMA2, "llama2"},
    {CHAT_TEMPLATE_MISTRAL_V0, "mistral-v0"},
    {CHAT_TEMPLATE_MISTRAL_V1, "mistral-v1"},
    {CHAT_TEMPLATE_MISTRAL_V3, "mistral-v3"},
    {CHAT_TEMPLATE_MISTRAL_V3_TEKKEN, "mistral-v3-tekken"},
    {CHAT_TEMPLATE_MISTRAL_V7, "mistral-v7"},
};

bool contains(const std::string& s, const char* needle) {
    return s.find(needle) != std::string::npos;
}

// Python's str.strip() / Jinja's trim for the whitespace chat text carries.
std::string strip(const std::string& s) {
    const char* ws = " \t\n\r\f\v";
    const size_t b = s.find_first_not_of(ws);
    if (b == std::string::npos) return "";
    return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// The escapes a Jinja string literal may use in chat templates.
std::string jinja_unescape(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '\\' || i + 1 == s.size()) {
            out += s[i];
            continue;
        }
        const char c = s[++i];
        out += c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
    }
    return out;
}

// A ChatML template that writes a system turn of its own when the
// conversation has none (SmolLM2, Qwen2/2.5) has it as one string literal:
// '<|im_start|>system\n<text><|im_end|>\n'. The literal that splices in the
// caller's system message ends right after "system\n" and does not count.
std::string chatml_default_system(const std::string& jinja) {
    const std::string open = "<|im_start|>system";
    const std::string close = "<|im_end|>";
    for (size_t at = jinja.find(open); at != std::string::npos; at = jinja.find(open, at + 1)) {
        size_t p = at + open.size();
        if (jinja.compare(p, 1, "\n") == 0)
            p += 1;
        else if (jinja.compare(p, 2, "\\n") == 0)
            p += 2;
        else
            continue;
        const size_t end = jinja.find(close, p);
        if (end == std::string::npos || end == p) continue;
        const std::string text = jinja.substr(p, end - p);
        // Still inside one literal: no quote, no expression.
        if (text.find_first_of("'\"{}") != std::string::npos) continue;
        return jinja_unescape(text);
    }
    return "";
}

[[noreturn]] void fail_alternation() {
    throw error("chat template: conversation roles must alternate user/assistant/user/...");
}

[[noreturn]] void fail_role(const std::string& role, const char* family) {
    throw error("chat template " + std::string(family) + ": role '" + role +
                "' is not supported (user, assistant, and an optional first system message)");
}

std::string apply_chatml(const chat_template& t, const std::vector<chat_message>& msgs) {
    std::string out;
    if (!msgs.empty() && msgs[0].role != "system" && !t.default_system.empty())
        out += "<|im_start|>system\n" + t.default_system + "<|im_end|>\n";
    for (const auto& m : msgs) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    return out;
}

std::string apply_llama3(const chat_template& t, const std::vector<chat_message>& msgs) {
    std::string out = msgs.empty() ? "" : t.bos;
    for (const auto& m : msgs)
        out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + strip(m.content) +
               "<|eot_id|>";
    return out;
}

// Llama 3.2's template takes today's date from strftime_now when the
// renderer provides it (transformers does); 3.1 and 3.3 fix date_string.
std::string llama31_date(const std::string& jinja) {
    if (contains(jinja, "strftime_now")) return "";
    const std::string key = "set date_string = \"";
    const size_t at = jinja.find(key);
    if (at == std::string::npos) return "26 Jul 2024";
    const size_t end = jinja.find('"', at + key.size());
    return jinja.substr(at + key.size(), end - at - key.size());
}

std::string apply_llama31(const chat_template& t, const std::vector<chat_message>& msgs) {
    std::string date = t.date;
    if (date.empty()) {
        char buf[64];
        const std::time_t now = std::time(nullptr);
        std::tm tm{};
        localtime_r(&now, &tm);
        std::strftime(buf, sizeof buf, "%d %b %Y", &tm);
        date = buf;
    }
    const bool has_system = !msgs.empty() && msgs[0].role == "system";
    std::string out = t.bos + "<|start_header_id|>system<|end_header_id|>\n\n";
    out += "Cutting Knowledge Date: December 2023\nToday Date: " + date + "\n\n";
    out += (has_system ? strip(msgs[0].content) : "") + "<|eot_id|>";
    for (size_t i = has_system ? 1 : 0; i < msgs.size(); ++i)
        out += "<|start_header_id|>" + msgs[i].role + "<|end_header_id|>\n\n" +
               strip(msgs[i].content) + "<|eot_id|>";
    return out;
}

// Llama-2-chat: the system message goes inside the first [INST] block.
std::string apply_llama2(const chat_template& t, const std::vector<chat_message>& msgs) {
    const bool has_system = !msgs.empty() && msgs[0].role == "system";
    std::string out;
    for (size_t i = has_system ? 1 : 0, k = 0; i < msgs.size(); ++i, ++k) {
        const chat_message& m = msgs[i];
        if ((m.role == "user") != (k % 2 == 0)) fail_alternation();
        std::string content = m.content;
        if (k == 0 && has_system)
            content = "<<SYS>>\n" + msgs[0].content + "\n<</SYS>>\n\n" + content;
        if (m.role == "user")
            out += t.bos + "[INST] " + strip(content) + " [/INST]";
        else if (m.role == "assistant")
            out += " " + strip(content) + " " + t.eos;
    }
    return out;
}

std::string apply_mistral(const chat_template& t, const std::vector<chat_message>& msgs) {
    const char* name = chat_template_name(t.kind);
    if (t.kind == CHAT_TEMPLATE_MISTRAL_V7) {
        std::string out = t.bos;
        for (const auto& m : msgs) {
            if (m.role == "user")
                out += "[INST] " + m.content + "[/INST]";
            else if (m.role == "system")
                out += "[SYSTEM_PROMPT] " + m.content + "[/SYSTEM_PROMPT]";
            else if (m.role == "assistant")
                out += " " + m.content + t.eos;
            else
                fail_role(m.role, name);
        }
        return out;
    }
    const bool has_system =
        !msgs.empty() && msgs[0].role == "system" && t.kind != CHAT_TEMPLATE_MISTRAL_V0;
    const size_t first = has_system ? 1 : 0;
    for (size_t i = first; i < msgs.size(); ++i)
        if ((msgs[i].role == "user") != ((i - first) % 2 == 0)) fail_alternation();
    std::string out = t.bos;
    for (size_t i = first; i < msgs.size(); ++i) {
        const chat_message& m = msgs[i];
        if (m.role != "user" && m.role != "assistant") fail_role(m.role, name);
        const bool user = m.role == "user";
        // v1 prepends the system prompt to the first user message, v3 to the
        // last message when it is a user's (it is dropped otherwise).
        const bool with_system =
            has_system && (t.kind == CHAT_TEMPLATE_MISTRAL_V1 ? i == first : i + 1 == msgs.size());
        const std::string content =
            with_system && user ? msgs[0].content + "\n\n" + m.content : m.content;
        switch (t.kind) {
            case CHAT_TEMPLATE_MISTRAL_V0:
                out += user ? "[INST] " + content + " [/INST]" : content + t.eos;
                break;
            case CHAT_TEMPLATE_MISTRAL_V1:
                out += user ? " [INST] " + content + " [/INST]" : " " + content + t.eos;
                break;
            case CHAT_TEMPLATE_MISTRAL_V3:
                out += user ? "[INST] " + content + "[/INST]" : " " + strip(content) + t.eos;
                break;
            default:  // v3-tekken
                out += user ? "[INST]" + content + "[/INST]" : content + t.eos;
                break;
        }
    }
    return out;
}

}  // namespace

std::string chat_template_names() {
    std::string s;
    for (const auto& f : k_families) s += (s.empty() ? "" : ", ") + std::string(f.name);
    return s;
}

const char* chat_template_name(chat_template_kind k) {
    for (const auto& f : k_families)
        if (f.kind == k) return f.name;
    return "?";
}

chat_template_kind chat_template_from_name(const std::string& name) {
    for (const auto& f : k_families)
        if (name == f.name) return f.kind;
    throw error("unknown chat template '" + name + "'; supported: " + chat_template_names());
}

chat_template chat_template_detect(const std::string& jinja, const std::string& bos,
                                   const std::string& eos) {
    chat_template t;
    t.bos = bos;
    t.eos = eos;
    if (contains(jinja, "<|im_start|>")) {
        t.kind = CHAT_TEMPLATE_CHATML;
        t.default_system = chatml_default_system(jinja);
    } else if (contains(jinja, "<|start_header_id|>") && contains(jinja, "<|end_header_id|>")) {
        t.kind = contains(jinja, "Cutting Knowledge Date") ? CHAT_TEMPLATE_LLAMA31
                                                           : CHAT_TEMPLATE_LLAMA3;
        t.date = llama31_date(jinja);
    } else if (contains(jinja, "[SYSTEM_PROMPT]")) {
        t.kind = CHAT_TEMPLATE_MISTRAL_V7;
    } else if (contains(jinja, "[INST]") &&
               (contains(jinja, "' [INST] ' + system_message") ||
                contains(jinja, "[AVAILABLE_TOOLS]"))) {
        // Mistral's own templates: the spacing around [INST] tells the versions apart.
        if (contains(jinja, " [INST] "))
            t.kind = CHAT_TEMPLATE_MISTRAL_V1;
        else if (contains(jinja, "\"[INST]\""))
            t.kind = CHAT_TEMPLATE_MISTRAL_V3_TEKKEN;
        else
            t.kind = CHAT_TEMPLATE_MISTRAL_V3;
    } else if (contains(jinja, "[INST]") && contains(jinja, "<<SYS>>")) {
        t.kind = CHAT_TEMPLATE_LLAMA2;
    } else if (contains(jinja, "[INST]")) {
        t.kind = CHAT_TEMPLATE_MISTRAL_V0;
    } else if (jinja.empty()) {
        throw error("the model has no chat template (tokenizer.chat_template); choose one with "
                    "--chat-template NAME: " +
                    chat_template_names());
    } else {
        throw error("chat template not understood; supported: " + chat_template_names() +
                    " (choose one with --chat-template NAME)");
    }
    return t;
}

chat_template chat_template_select(const std::string& jinja, const std::string& name,
                                   const std::string& bos, const std::string& eos) {
    if (name.empty()) return chat_template_detect(jinja, bos, eos);
    chat_template t;
    t.kind = chat_template_from_name(name);
    t.bos = bos;
    t.eos = eos;
    if (t.kind == CHAT_TEMPLATE_CHATML) t.default_system = chatml_default_system(jinja);
    t.date = llama31_date(jinja);
    return t;
}

std::string chat_template_apply(const chat_template& t, const std::vector<chat_message>& messages,
                                bool add_generation_prompt) {
    switch (t.kind) {
        case CHAT_TEMPLATE_CHATML: {
            std::string out = apply_chatml(t, messages);
            if (add_generation_prompt) out += "<|im_start|>assistant\n";
            return out;
        }
        case CHAT_TEMPLATE_LLAMA3:
        case CHAT_TEMPLATE_LLAMA31: {
            std::string out = t.kind == CHAT_TEMPLATE_LLAMA3 ? apply_llama3(t, messages)
                                                             : apply_llama31(t, messages);
            if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
            return out;
        }
        // These templates end a user turn with [/INST] and have no separate
        // assistant opening: add_generation_prompt changes nothing.
        case CHAT_TEMPLATE_LLAMA2: return apply_llama2(t, messages);
        default: return apply_mistral(t, messages);
    }
}

}  // namespace kvrt
